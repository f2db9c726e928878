# The gateway's public endpoint: a network load balancer with a TLS listener (the certificate
# from ACM, TLS 1.2 and 1.3 only) that re-encrypts to the gateway tasks, which terminate TLS
# themselves. Layer 4 keeps HTTP semantics (problem+json, Retry-After) in the gateway alone.

resource "aws_s3_bucket" "lb_logs" {
  #checkov:skip=CKV_AWS_18:This bucket receives the load balancer's access logs; logging its own access would log into itself.
  #checkov:skip=CKV_AWS_144:Access logs stay in their region; copying them elsewhere would move client IPs across jurisdictions.
  #checkov:skip=CKV2_AWS_62:Nothing consumes events of an access-log bucket; logs are queried in place.
  region        = var.aws_region
  bucket        = "${local.name}-lb-logs-${local.account}"
  force_destroy = false
  tags          = local.tags
}

resource "aws_s3_bucket_ownership_controls" "lb_logs" {
  region = var.aws_region
  bucket = aws_s3_bucket.lb_logs.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "lb_logs" {
  region                  = var.aws_region
  bucket                  = aws_s3_bucket.lb_logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "lb_logs" {
  region = var.aws_region
  bucket = aws_s3_bucket.lb_logs.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "lb_logs" {
  region = var.aws_region
  bucket = aws_s3_bucket.lb_logs.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.main.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "lb_logs" {
  region = var.aws_region
  bucket = aws_s3_bucket.lb_logs.id

  rule {
    id     = "expire-access-logs"
    status = "Enabled"
    filter {}
    expiration {
      days = var.log_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

data "aws_iam_policy_document" "lb_logs" {
  statement {
    sid       = "DeliveryWritesLogs"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.lb_logs.arn}/*"]
    principals {
      type        = "Service"
      identifiers = ["delivery.logs.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }

  statement {
    sid     = "TlsOnly"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.lb_logs.arn,
      "${aws_s3_bucket.lb_logs.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "lb_logs" {
  region = var.aws_region
  bucket = aws_s3_bucket.lb_logs.id
  policy = data.aws_iam_policy_document.lb_logs.json
}

resource "aws_lb" "gateway" {
  region                           = var.aws_region
  name                             = "${local.name}-gw"
  load_balancer_type               = "network"
  internal                         = false
  subnets                          = aws_subnet.public[*].id
  security_groups                  = [aws_security_group.load_balancer.id]
  enable_deletion_protection       = true
  enable_cross_zone_load_balancing = true

  access_logs {
    bucket  = aws_s3_bucket.lb_logs.id
    enabled = true
  }

  tags = local.tags
}

resource "aws_lb_target_group" "gateway" {
  region               = var.aws_region
  name                 = "${local.name}-gw"
  port                 = local.gateway_port
  protocol             = "TLS"
  target_type          = "ip"
  vpc_id               = aws_vpc.main.id
  deregistration_delay = 30

  health_check {
    protocol            = "HTTPS"
    path                = "/health/ready"
    port                = "traffic-port"
    healthy_threshold   = 2
    unhealthy_threshold = 2
    interval            = 10
  }

  tags = local.tags
}

resource "aws_lb_listener" "gateway_tls" {
  region            = var.aws_region
  load_balancer_arn = aws_lb.gateway.arn
  port              = 443
  protocol          = "TLS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn
  alpn_policy       = "HTTP1Only"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.gateway.arn
  }

  tags = local.tags
}
