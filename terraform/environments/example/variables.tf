variable "regions" {
  description = "Every region, by code: the one map the whole deployment derives from. Adding a region is adding an entry (see README.md)."
  type = map(object({
    aws_region        = string
    zone_ids          = list(string)
    cidr_block        = string
    currencies        = list(string)
    status            = optional(string, "active")
    ledger_nodes      = optional(number, 2)
    consul_datacenter = string
    certificate_arn   = string
    mesh_gateways     = optional(list(string), [])
  }))

  validation {
    condition     = length(var.regions) >= 1
    error_message = "At least one region."
  }
  validation {
    condition     = length(distinct([for r in values(var.regions) : r.cidr_block])) == length(var.regions)
    error_message = "Regions' CIDR blocks must differ: ledgers of different regions call each other."
  }
}

variable "home_aws_region" {
  description = "The AWS provider's default region (IAM and Route 53 are global; every regional resource names its own region)."
  type        = string
  default     = "eu-west-1"
}

variable "images" {
  description = "Container images of the gateway and the ledger node, pinned by digest."
  type = object({
    gateway = string
    ledger  = string
  })
}

variable "hosted_zone_id" {
  description = "Route 53 hosted zone of the public hostname."
  type        = string
}

variable "hostname" {
  description = "The public API hostname (api.example.com)."
  type        = string
}

variable "consul_primary_datacenter" {
  description = "The Consul datacenter that is primary for WAN federation (ACLs, CA)."
  type        = string
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
