# One regiongate region on AWS: network, the ledger's PostgreSQL, Redis for rate limits, the
# gateway and ledger services on ECS Fargate behind a TLS load balancer, secrets, logs and
# metrics, and the region's records in Consul's KV. Every resource takes `region`, so one AWS
# provider configuration serves every instance of this module.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  name    = "regiongate-${var.code}"
  zones   = var.zone_ids
  account = data.aws_caller_identity.current.account_id

  gateway_port = 8443
  ledger_port  = 8101
  redis_port   = 6379
  db_port      = 5432

  tags = merge(var.tags, {
    "regiongate:region" = var.code
    "managed-by"        = "terraform"
  })
}
