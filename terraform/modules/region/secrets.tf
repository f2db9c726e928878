# Service keys (the HMAC keyring the ledgers and gateways sign with) live in Secrets Manager;
# their values are put there by the operator (regiongate's key rotation runbook), never by
# Terraform, so no secret is in a variable, a default or the state.

resource "aws_secretsmanager_secret" "service_keys" {
  #checkov:skip=CKV2_AWS_57:The keyring rotates by adding a key to every region's keyring before signing with it (README, service credentials); a single-secret rotation Lambda cannot order that across regions.
  region                  = var.aws_region
  name                    = "regiongate/${var.code}/service-keys"
  description             = "Service keyring of ${local.name} (key_id: secret per line)"
  kms_key_id              = aws_kms_key.main.arn
  recovery_window_in_days = 30
  tags                    = local.tags
}
