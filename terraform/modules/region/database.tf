# The region's ledger: PostgreSQL, Multi-AZ (a synchronous standby in another zone), encrypted
# with the region's key, with point-in-time recovery, deletion protection and TLS required.
# The master password is generated and kept by RDS in Secrets Manager: it never passes through
# Terraform variables or state.

resource "aws_db_subnet_group" "ledger" {
  region     = var.aws_region
  name       = "${local.name}-ledger"
  subnet_ids = aws_subnet.private[*].id
  tags       = local.tags
}

resource "aws_db_parameter_group" "ledger" {
  region = var.aws_region
  name   = "${local.name}-ledger-pg${var.database.engine_version}"
  family = "postgres${var.database.engine_version}"

  # Money is acknowledged only once it is durable, on the standby too (Multi-AZ).
  parameter {
    name  = "synchronous_commit"
    value = "on"
  }
  # Connections come from ledger nodes over TLS only.
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }
  # A batch that waits on a lock longer than this is a bug or an outage: fail it, retry it.
  parameter {
    name  = "lock_timeout"
    value = "5000"
  }
  parameter {
    name  = "idle_in_transaction_session_timeout"
    value = "20000"
  }
  # Slow statements and every DDL are logged for audits.
  parameter {
    name  = "log_min_duration_statement"
    value = "250"
  }
  parameter {
    name  = "log_statement"
    value = "ddl"
  }
  parameter {
    name  = "log_connections"
    value = "1"
  }
  parameter {
    name  = "log_disconnections"
    value = "1"
  }

  tags = local.tags
}

data "aws_iam_policy_document" "monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "rds_monitoring" {
  name               = "${local.name}-rds-monitoring"
  assume_role_policy = data.aws_iam_policy_document.monitoring_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_db_instance" "ledger" {
  #checkov:skip=CKV_AWS_133:backup_retention_period is var.database.backup_retention_days, validated to 7..35 days; checkov cannot resolve an optional object attribute.
  region                                = var.aws_region
  identifier                            = "${local.name}-ledger"
  engine                                = "postgres"
  engine_version                        = var.database.engine_version
  instance_class                        = var.database.instance_class
  db_name                               = "ledger_${var.code}"
  username                              = "regiongate"
  manage_master_user_password           = true
  master_user_secret_kms_key_id         = aws_kms_key.main.arn
  iam_database_authentication_enabled   = true
  multi_az                              = true
  storage_type                          = "gp3"
  iops                                  = var.database.iops
  allocated_storage                     = var.database.allocated_storage_gb
  max_allocated_storage                 = var.database.max_allocated_storage
  storage_encrypted                     = true
  kms_key_id                            = aws_kms_key.main.arn
  db_subnet_group_name                  = aws_db_subnet_group.ledger.name
  vpc_security_group_ids                = [aws_security_group.database.id]
  parameter_group_name                  = aws_db_parameter_group.ledger.name
  publicly_accessible                   = false
  backup_retention_period               = var.database.backup_retention_days
  backup_window                         = "02:00-03:00"
  maintenance_window                    = "sun:03:30-sun:04:30"
  copy_tags_to_snapshot                 = true
  deletion_protection                   = true
  skip_final_snapshot                   = false
  final_snapshot_identifier             = "${local.name}-ledger-final"
  auto_minor_version_upgrade            = true
  monitoring_interval                   = 15
  monitoring_role_arn                   = aws_iam_role.rds_monitoring.arn
  performance_insights_enabled          = true
  performance_insights_kms_key_id       = aws_kms_key.main.arn
  performance_insights_retention_period = 7
  enabled_cloudwatch_logs_exports       = ["postgresql", "upgrade"]
  tags                                  = local.tags
}
