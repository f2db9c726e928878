# Redis for the gateways' rate limits: TLS in transit with an AUTH token, encrypted at rest with
# the region's key, a replica per extra zone with automatic failover. The token is generated
# here and kept in Secrets Manager; gateways read it from there.

resource "random_password" "redis_auth" {
  length  = 64
  special = false
}

resource "aws_secretsmanager_secret" "redis_auth" {
  #checkov:skip=CKV2_AWS_57:ElastiCache AUTH rotation is a coordinated two-step change (auth_token_update_strategy ROTATE, then SET) done by the operator runbook, not a rotation Lambda.
  region                  = var.aws_region
  name                    = "regiongate/${var.code}/redis-auth"
  description             = "AUTH token of ${local.name} Redis (rate limits)"
  kms_key_id              = aws_kms_key.main.arn
  recovery_window_in_days = 30
  tags                    = local.tags
}

resource "aws_secretsmanager_secret_version" "redis_auth" {
  region        = var.aws_region
  secret_id     = aws_secretsmanager_secret.redis_auth.id
  secret_string = random_password.redis_auth.result
}

resource "aws_elasticache_subnet_group" "redis" {
  region     = var.aws_region
  name       = "${local.name}-redis"
  subnet_ids = aws_subnet.private[*].id
  tags       = local.tags
}

resource "aws_elasticache_replication_group" "redis" {
  region                     = var.aws_region
  replication_group_id       = "${local.name}-redis"
  description                = "${local.name} rate limits"
  engine                     = "redis"
  engine_version             = "7.1"
  node_type                  = var.redis.node_type
  num_cache_clusters         = 1 + var.redis.replicas
  port                       = local.redis_port
  automatic_failover_enabled = true
  multi_az_enabled           = true
  subnet_group_name          = aws_elasticache_subnet_group.redis.name
  security_group_ids         = [aws_security_group.redis.id]
  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.main.arn
  transit_encryption_enabled = true
  transit_encryption_mode    = "required"
  auth_token                 = random_password.redis_auth.result
  snapshot_retention_limit   = 7
  auto_minor_version_upgrade = true
  apply_immediately          = false
  tags                       = local.tags
}
