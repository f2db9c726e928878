variable "code" {
  description = "The region's short code (eu, us, ap...); it prefixes account ids and names every resource."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2,8}$", var.code))
    error_message = "code is 2 to 8 lower-case letters."
  }
}

variable "aws_region" {
  description = "The AWS region this regiongate region runs in (eu-west-1, us-east-1...)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.aws_region))
    error_message = "aws_region is an AWS region name such as eu-west-1."
  }
}

variable "cidr_block" {
  description = "The region's VPC CIDR (a /16 to /20); regions must not overlap, since ledgers call each other."
  type        = string

  validation {
    condition     = can(cidrhost(var.cidr_block, 0)) && tonumber(split("/", var.cidr_block)[1]) >= 16 && tonumber(split("/", var.cidr_block)[1]) <= 20
    error_message = "cidr_block is a valid CIDR from /16 to /20."
  }
}

variable "peer_cidr_blocks" {
  description = "VPC CIDRs of the other regions, whose ledger nodes call this region's for saga steps (over the inter-region network)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for cidr in var.peer_cidr_blocks : can(cidrhost(cidr, 0)) && cidr != "0.0.0.0/0"])
    error_message = "peer_cidr_blocks are valid CIDRs, never 0.0.0.0/0."
  }
}

variable "zone_ids" {
  description = "Availability zone ids (euw1-az1...) to spread subnets, the database standby and services over. Named, not counted: the set never changes when AWS adds a zone."
  type        = list(string)

  validation {
    condition     = length(var.zone_ids) >= 2 && length(var.zone_ids) <= 6 && length(distinct(var.zone_ids)) == length(var.zone_ids)
    error_message = "zone_ids lists 2 to 6 distinct zones (high availability needs at least 2)."
  }
  validation {
    condition     = alltrue([for zone in var.zone_ids : can(regex("^[a-z]{2,5}[0-9]-az[0-9]+$", zone))])
    error_message = "zone_ids are availability zone ids such as euw1-az1."
  }
}

variable "directory_records" {
  description = "This region's directory records for Consul KV (key to JSON value), from the topology module's consul_kv output."
  type        = map(string)

  validation {
    condition     = length(var.directory_records) >= 1
    error_message = "directory_records must hold at least this region's own record."
  }
}

variable "consul_datacenter" {
  description = "The Consul datacenter of this region, where its directory records and services live."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9-]{1,64}$", var.consul_datacenter))
    error_message = "consul_datacenter is 1 to 64 lower-case letters, digits or dashes."
  }
}

variable "images" {
  description = "Container images of the gateway and the ledger node, pinned by digest (repository@sha256:...)."
  type = object({
    gateway = string
    ledger  = string
  })

  validation {
    condition     = alltrue([for image in values(var.images) : can(regex("@sha256:[0-9a-f]{64}$", image))])
    error_message = "Images are pinned by digest (@sha256:...), never by a mutable tag."
  }
}

variable "gateway" {
  description = "Gateway service size: tasks scale between min_tasks and max_tasks on CPU; cpu in vCPU units (1024 = 1 vCPU), memory in MiB."
  type = object({
    min_tasks      = optional(number, 3)
    max_tasks      = optional(number, 30)
    cpu            = optional(number, 1024)
    memory_mib     = optional(number, 2048)
    workers        = optional(number, 1)
    cpu_target_pct = optional(number, 60)
  })
  default = {}

  validation {
    condition     = var.gateway.min_tasks >= 2 && var.gateway.max_tasks >= var.gateway.min_tasks && var.gateway.max_tasks <= 500
    error_message = "gateway.min_tasks is at least 2 (one per zone) and max_tasks is from min_tasks to 500."
  }
  validation {
    condition     = var.gateway.cpu_target_pct >= 20 && var.gateway.cpu_target_pct <= 90
    error_message = "gateway.cpu_target_pct is 20 to 90."
  }
}

variable "ledger" {
  description = "Ledger node service size: tasks scale between min_tasks and max_tasks on CPU (each runs its own batchers against the one database)."
  type = object({
    min_tasks      = optional(number, 2)
    max_tasks      = optional(number, 8)
    cpu            = optional(number, 2048)
    memory_mib     = optional(number, 4096)
    cpu_target_pct = optional(number, 60)
  })
  default = {}

  validation {
    condition     = var.ledger.min_tasks >= 2 && var.ledger.max_tasks >= var.ledger.min_tasks && var.ledger.max_tasks <= 64
    error_message = "ledger.min_tasks is at least 2 and max_tasks is from min_tasks to 64."
  }
}

variable "database" {
  description = "The region's ledger database: PostgreSQL, Multi-AZ. Sizes in GiB; backups kept backup_retention_days."
  type = object({
    instance_class        = optional(string, "db.r6g.xlarge")
    engine_version        = optional(string, "16")
    allocated_storage_gb  = optional(number, 200)
    max_allocated_storage = optional(number, 2000)
    backup_retention_days = optional(number, 35)
    iops                  = optional(number, 12000)
  })
  default = {}

  validation {
    condition     = var.database.backup_retention_days >= 7 && var.database.backup_retention_days <= 35
    error_message = "database.backup_retention_days is 7 to 35: money needs point-in-time recovery."
  }
  validation {
    condition     = var.database.max_allocated_storage >= var.database.allocated_storage_gb
    error_message = "database.max_allocated_storage is at least allocated_storage_gb."
  }
}

variable "redis" {
  description = "Redis for rate limits: a replication group with a replica per extra zone."
  type = object({
    node_type = optional(string, "cache.r7g.large")
    replicas  = optional(number, 2)
  })
  default = {}

  validation {
    condition     = var.redis.replicas >= 1 && var.redis.replicas <= 5
    error_message = "redis.replicas is 1 to 5 (automatic failover needs at least one)."
  }
}

variable "certificate_arn" {
  description = "ACM certificate of the public gateway hostname, for the load balancer's TLS listener."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:acm:", var.certificate_arn))
    error_message = "certificate_arn is an ACM certificate ARN."
  }
}

variable "log_retention_days" {
  description = "How long logs are kept in CloudWatch, in days (a year at least, for audits)."
  type        = number
  default     = 400

  validation {
    condition     = contains([365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days is a CloudWatch retention of at least a year (365, 400, 545, 731...)."
  }
}

variable "tags" {
  description = "Tags on every resource (owner, cost centre...)."
  type        = map(string)
  default     = {}
}
