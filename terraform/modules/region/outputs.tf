output "load_balancer" {
  description = "The gateway's public load balancer: DNS name and hosted zone, for the global layer's records."
  value = {
    dns_name = aws_lb.gateway.dns_name
    zone_id  = aws_lb.gateway.zone_id
  }
}

output "vpc" {
  description = "The region's VPC id and CIDR, for peering or a transit gateway between regions."
  value = {
    id         = aws_vpc.main.id
    cidr_block = aws_vpc.main.cidr_block
  }
}

output "database_endpoint" {
  description = "The ledger database's endpoint (host:port); its credentials are in Secrets Manager."
  value       = aws_db_instance.ledger.endpoint
}

output "redis_endpoint" {
  description = "Redis's primary endpoint (TLS); its AUTH token is in Secrets Manager."
  value       = aws_elasticache_replication_group.redis.primary_endpoint_address
}

output "secrets" {
  description = "ARNs of the region's secrets (values are never outputs)."
  value = {
    service_keys = aws_secretsmanager_secret.service_keys.arn
    redis_auth   = aws_secretsmanager_secret.redis_auth.arn
    database     = aws_db_instance.ledger.master_user_secret[0].secret_arn
  }
}

output "prometheus_workspace" {
  description = "The Amazon Managed Prometheus workspace that receives this region's metrics."
  value       = aws_prometheus_workspace.main.prometheus_endpoint
}
