# A VPC per region: public subnets hold only the load balancer and the NAT gateways; services,
# the database and Redis live in private subnets. Flow logs go to CloudWatch.

resource "aws_vpc" "main" {
  region               = var.aws_region
  cidr_block           = var.cidr_block
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = merge(local.tags, { Name = local.name })
}

# The default security group allows nothing: every resource names its own group.
resource "aws_default_security_group" "main" {
  region = var.aws_region
  vpc_id = aws_vpc.main.id
  tags   = local.tags
}

resource "aws_subnet" "public" {
  count                   = length(local.zones)
  region                  = var.aws_region
  vpc_id                  = aws_vpc.main.id
  availability_zone_id    = local.zones[count.index]
  cidr_block              = cidrsubnet(var.cidr_block, 4, count.index)
  map_public_ip_on_launch = false
  tags                    = merge(local.tags, { Name = "${local.name}-public-${local.zones[count.index]}" })
}

resource "aws_subnet" "private" {
  count                   = length(local.zones)
  region                  = var.aws_region
  vpc_id                  = aws_vpc.main.id
  availability_zone_id    = local.zones[count.index]
  cidr_block              = cidrsubnet(var.cidr_block, 4, count.index + 8)
  map_public_ip_on_launch = false
  tags                    = merge(local.tags, { Name = "${local.name}-private-${local.zones[count.index]}" })
}

resource "aws_internet_gateway" "main" {
  region = var.aws_region
  vpc_id = aws_vpc.main.id
  tags   = local.tags
}

resource "aws_eip" "nat" {
  count  = length(local.zones)
  region = var.aws_region
  domain = "vpc"
  tags   = local.tags
}

resource "aws_nat_gateway" "main" {
  count         = length(local.zones)
  region        = var.aws_region
  allocation_id = aws_eip.nat[count.index].id
  subnet_id     = aws_subnet.public[count.index].id
  tags          = local.tags
}

resource "aws_route_table" "public" {
  region = var.aws_region
  vpc_id = aws_vpc.main.id
  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.main.id
  }
  tags = local.tags
}

resource "aws_route_table_association" "public" {
  count          = length(local.zones)
  region         = var.aws_region
  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public.id
}

resource "aws_route_table" "private" {
  count  = length(local.zones)
  region = var.aws_region
  vpc_id = aws_vpc.main.id
  route {
    cidr_block     = "0.0.0.0/0"
    nat_gateway_id = aws_nat_gateway.main[count.index].id
  }
  tags = local.tags
}

resource "aws_route_table_association" "private" {
  count          = length(local.zones)
  region         = var.aws_region
  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private[count.index].id
}

resource "aws_cloudwatch_log_group" "flow" {
  region            = var.aws_region
  name              = "/regiongate/${var.code}/vpc-flow"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
  tags              = local.tags
}

data "aws_iam_policy_document" "flow_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["vpc-flow-logs.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "flow" {
  statement {
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${aws_cloudwatch_log_group.flow.arn}:*"]
  }
}

resource "aws_iam_role" "flow" {
  name               = "${local.name}-vpc-flow"
  assume_role_policy = data.aws_iam_policy_document.flow_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "flow" {
  name   = "write-flow-logs"
  role   = aws_iam_role.flow.id
  policy = data.aws_iam_policy_document.flow.json
}

resource "aws_flow_log" "main" {
  region          = var.aws_region
  vpc_id          = aws_vpc.main.id
  traffic_type    = "ALL"
  log_destination = aws_cloudwatch_log_group.flow.arn
  iam_role_arn    = aws_iam_role.flow.arn
  tags            = local.tags
}

# Security groups: the only ingress from anywhere is the load balancer's TLS listener. Each
# tier accepts only the tier in front of it; ledgers also accept peer regions' ledgers.

resource "aws_security_group" "load_balancer" {
  region      = var.aws_region
  name        = "${local.name}-lb"
  description = "Public TLS listener of the gateway"
  vpc_id      = aws_vpc.main.id

  ingress {
    description = "Public HTTPS: game clients and game servers"
    protocol    = "tcp"
    from_port   = 443
    to_port     = 443
    cidr_blocks = ["0.0.0.0/0"]
  }

  egress {
    description = "To the gateway tasks"
    protocol    = "tcp"
    from_port   = local.gateway_port
    to_port     = local.gateway_port
    cidr_blocks = [var.cidr_block]
  }

  tags = local.tags
}

resource "aws_security_group" "gateway" {
  region      = var.aws_region
  name        = "${local.name}-gateway"
  description = "Gateway tasks"
  vpc_id      = aws_vpc.main.id

  ingress {
    description     = "TLS from the load balancer"
    protocol        = "tcp"
    from_port       = local.gateway_port
    to_port         = local.gateway_port
    security_groups = [aws_security_group.load_balancer.id]
  }

  egress {
    description = "Ledger nodes of this region and of peer regions"
    protocol    = "tcp"
    from_port   = local.ledger_port
    to_port     = local.ledger_port
    cidr_blocks = concat([var.cidr_block], var.peer_cidr_blocks)
  }

  egress {
    description = "Redis (rate limits)"
    protocol    = "tcp"
    from_port   = local.redis_port
    to_port     = local.redis_port
    cidr_blocks = [var.cidr_block]
  }

  egress {
    description = "HTTPS out through NAT: image pulls, the JWKS URL, Secrets Manager, CloudWatch"
    protocol    = "tcp"
    from_port   = 443
    to_port     = 443
    cidr_blocks = ["0.0.0.0/0"]
  }

  tags = local.tags
}

resource "aws_security_group" "ledger" {
  region      = var.aws_region
  name        = "${local.name}-ledger"
  description = "Ledger node tasks"
  vpc_id      = aws_vpc.main.id

  ingress {
    description = "Signed service calls: this region's gateways and peer regions' ledgers and gateways"
    protocol    = "tcp"
    from_port   = local.ledger_port
    to_port     = local.ledger_port
    cidr_blocks = concat([var.cidr_block], var.peer_cidr_blocks)
  }

  egress {
    description = "The ledger database"
    protocol    = "tcp"
    from_port   = local.db_port
    to_port     = local.db_port
    cidr_blocks = [var.cidr_block]
  }

  egress {
    description = "Peer regions' ledgers (saga steps)"
    protocol    = "tcp"
    from_port   = local.ledger_port
    to_port     = local.ledger_port
    cidr_blocks = length(var.peer_cidr_blocks) > 0 ? var.peer_cidr_blocks : [var.cidr_block]
  }

  egress {
    description = "HTTPS out through NAT: image pulls, Secrets Manager, CloudWatch"
    protocol    = "tcp"
    from_port   = 443
    to_port     = 443
    cidr_blocks = ["0.0.0.0/0"]
  }

  tags = local.tags
}

resource "aws_security_group" "database" {
  region      = var.aws_region
  name        = "${local.name}-database"
  description = "The ledger database: only ledger nodes"
  vpc_id      = aws_vpc.main.id

  ingress {
    description     = "PostgreSQL from ledger nodes"
    protocol        = "tcp"
    from_port       = local.db_port
    to_port         = local.db_port
    security_groups = [aws_security_group.ledger.id]
  }

  tags = local.tags
}

resource "aws_security_group" "redis" {
  region      = var.aws_region
  name        = "${local.name}-redis"
  description = "Redis for rate limits: only gateways"
  vpc_id      = aws_vpc.main.id

  ingress {
    description     = "Redis TLS from gateways"
    protocol        = "tcp"
    from_port       = local.redis_port
    to_port         = local.redis_port
    security_groups = [aws_security_group.gateway.id]
  }

  tags = local.tags
}
