# One customer-managed key per region encrypts the database, Redis, secrets, logs and metrics.

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_111:In a key policy, Resource "*" is this key alone; the root statement is AWS's default key policy, which hands control to IAM.
  #checkov:skip=CKV_AWS_356:In a key policy, Resource "*" is this key alone.
  #checkov:skip=CKV_AWS_109:The root statement is AWS's default key policy; without it the key could become unmanageable.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${local.account}:root"]
    }
  }

  statement {
    sid = "CloudWatchLogsEncrypt"
    actions = [
      "kms:Encrypt",
      "kms:Decrypt",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:DescribeKey",
    ]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${var.aws_region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${data.aws_partition.current.partition}:logs:${var.aws_region}:${local.account}:log-group:/regiongate/${var.code}/*"]
    }
  }
}

resource "aws_kms_key" "main" {
  region                  = var.aws_region
  description             = "${local.name}: ledger database, Redis, secrets, logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = local.tags
}

resource "aws_kms_alias" "main" {
  region        = var.aws_region
  name          = "alias/${local.name}"
  target_key_id = aws_kms_key.main.key_id
}
