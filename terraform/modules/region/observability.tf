# Logs to CloudWatch (encrypted, kept at least a year); metrics to Amazon Managed Service for
# Prometheus, where each task's Prometheus endpoint is scraped by the collector sidecar.

resource "aws_cloudwatch_log_group" "service" {
  for_each          = toset(["gateway", "ledger"])
  region            = var.aws_region
  name              = "/regiongate/${var.code}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
  tags              = local.tags
}

resource "aws_cloudwatch_log_group" "metrics" {
  region            = var.aws_region
  name              = "/regiongate/${var.code}/prometheus"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
  tags              = local.tags
}

resource "aws_prometheus_workspace" "main" {
  region      = var.aws_region
  alias       = local.name
  kms_key_arn = aws_kms_key.main.arn

  logging_configuration {
    log_group_arn = "${aws_cloudwatch_log_group.metrics.arn}:*"
  }

  tags = local.tags
}
