# The gateway and the ledger node as ECS services on Fargate, in private subnets, scaling on CPU.
# Secrets reach the containers from Secrets Manager at start, never through task definitions.

resource "aws_ecs_cluster" "main" {
  region = var.aws_region
  name   = local.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  tags = local.tags
}

data "aws_iam_policy_document" "tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

# Execution role: what ECS itself needs to start a task (pull the image, write logs, fetch the
# task's secrets). Task roles: what the code needs at run time (nothing beyond its secrets).
resource "aws_iam_role" "execution" {
  name               = "${local.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.tasks_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "execution_secrets" {
  statement {
    actions = ["secretsmanager:GetSecretValue"]
    resources = [
      aws_secretsmanager_secret.service_keys.arn,
      aws_secretsmanager_secret.redis_auth.arn,
      aws_db_instance.ledger.master_user_secret[0].secret_arn,
    ]
  }
  statement {
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
  }
}

resource "aws_iam_role_policy" "execution_secrets" {
  name   = "read-task-secrets"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution_secrets.json
}

resource "aws_iam_role" "task" {
  for_each           = toset(["gateway", "ledger"])
  name               = "${local.name}-${each.key}-task"
  assume_role_policy = data.aws_iam_policy_document.tasks_assume.json
  tags               = local.tags
}

locals {
  services = {
    gateway = {
      image   = var.images.gateway
      port    = local.gateway_port
      cpu     = var.gateway.cpu
      memory  = var.gateway.memory_mib
      min     = var.gateway.min_tasks
      max     = var.gateway.max_tasks
      target  = var.gateway.cpu_target_pct
      command = ["gateway", "serve", "--config", "/etc/regiongate/gateway.yaml"]
      groups  = [aws_security_group.gateway.id]
      secrets = [
        { name = "REGIONGATE_SERVICE_KEYS", valueFrom = aws_secretsmanager_secret.service_keys.arn },
        { name = "REGIONGATE_REDIS_PASSWORD", valueFrom = aws_secretsmanager_secret.redis_auth.arn },
      ]
    }
    ledger = {
      image   = var.images.ledger
      port    = local.ledger_port
      cpu     = var.ledger.cpu
      memory  = var.ledger.memory_mib
      min     = var.ledger.min_tasks
      max     = var.ledger.max_tasks
      target  = var.ledger.cpu_target_pct
      command = ["ledger", "serve", "--config", "/etc/regiongate/ledger.yaml"]
      groups  = [aws_security_group.ledger.id]
      secrets = [
        { name = "REGIONGATE_SERVICE_KEYS", valueFrom = aws_secretsmanager_secret.service_keys.arn },
        { name = "REGIONGATE_DATABASE_PASSWORD", valueFrom = "${aws_db_instance.ledger.master_user_secret[0].secret_arn}:password::" },
      ]
    }
  }
}

resource "aws_ecs_task_definition" "service" {
  for_each                 = local.services
  region                   = var.aws_region
  family                   = "${local.name}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = each.value.cpu
  memory                   = each.value.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task[each.key].arn

  container_definitions = jsonencode([
    {
      name                   = each.key
      image                  = each.value.image
      essential              = true
      command                = each.value.command
      readonlyRootFilesystem = true
      privileged             = false
      user                   = "10001"
      portMappings           = [{ containerPort = each.value.port, protocol = "tcp" }]
      secrets                = each.value.secrets
      environment = [
        { name = "REGIONGATE_REGION", value = var.code },
        { name = "OTEL_EXPORTER_OTLP_ENDPOINT", value = "http://127.0.0.1:4318" },
      ]
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.service[each.key].name
          awslogs-region        = var.aws_region
          awslogs-stream-prefix = each.key
        }
      }
      healthCheck = {
        command  = ["CMD", "regiongate-health", each.key]
        interval = 10
        timeout  = 3
        retries  = 3
      }
    }
  ])

  tags = local.tags
}

resource "aws_ecs_service" "service" {
  for_each                           = local.services
  region                             = var.aws_region
  name                               = each.key
  cluster                            = aws_ecs_cluster.main.id
  task_definition                    = aws_ecs_task_definition.service[each.key].arn
  desired_count                      = each.value.min
  launch_type                        = "FARGATE"
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  propagate_tags                     = "SERVICE"

  network_configuration {
    subnets          = aws_subnet.private[*].id
    security_groups  = each.value.groups
    assign_public_ip = false
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  dynamic "load_balancer" {
    for_each = each.key == "gateway" ? [1] : []
    content {
      target_group_arn = aws_lb_target_group.gateway.arn
      container_name   = "gateway"
      container_port   = local.gateway_port
    }
  }

  lifecycle {
    ignore_changes = [desired_count] # autoscaling owns it
  }

  tags = local.tags
}

resource "aws_appautoscaling_target" "service" {
  for_each           = local.services
  region             = var.aws_region
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.main.name}/${aws_ecs_service.service[each.key].name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = each.value.min
  max_capacity       = each.value.max
}

resource "aws_appautoscaling_policy" "cpu" {
  for_each           = local.services
  region             = var.aws_region
  name               = "${local.name}-${each.key}-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.service[each.key].service_namespace
  resource_id        = aws_appautoscaling_target.service[each.key].resource_id
  scalable_dimension = aws_appautoscaling_target.service[each.key].scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = each.value.target
    scale_in_cooldown  = 300
    scale_out_cooldown = 60
    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}
