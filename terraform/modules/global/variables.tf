variable "regions" {
  description = "The regions, by code: their AWS region, directory status and gateway load balancer (from each region module). Only active regions receive game clients."
  type = map(object({
    aws_region = string
    status     = optional(string, "active")
    load_balancer = object({
      dns_name = string
      zone_id  = string
    })
  }))

  validation {
    condition     = alltrue([for code in keys(var.regions) : can(regex("^[a-z]{2,8}$", code))])
    error_message = "Region codes are 2 to 8 lower-case letters."
  }
  validation {
    condition     = alltrue([for r in values(var.regions) : contains(["active", "draining", "down"], r.status)])
    error_message = "A region's status is active, draining or down."
  }
  validation {
    condition     = length([for r in values(var.regions) : r if r.status == "active"]) >= 1
    error_message = "At least one region must be active, or no client can be served."
  }
}

variable "hosted_zone_id" {
  description = "The Route 53 hosted zone of the public hostname."
  type        = string

  validation {
    condition     = can(regex("^Z[A-Z0-9]{4,32}$", var.hosted_zone_id))
    error_message = "hosted_zone_id is a Route 53 hosted zone id (Z...)."
  }
}

variable "hostname" {
  description = "The public API hostname game clients call (api.example.com); latency-based records route each client to the nearest healthy region."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9-]+\\.)+[a-z]{2,}$", var.hostname))
    error_message = "hostname is a lower-case DNS name."
  }
}

variable "consul" {
  description = "Consul WAN federation: the primary datacenter, each region's datacenter, and its mesh gateways' WAN addresses (host:port)."
  type = object({
    primary_datacenter = string
    datacenters        = map(string)
    mesh_gateways      = map(list(string))
  })

  validation {
    condition     = contains(values(var.consul.datacenters), var.consul.primary_datacenter)
    error_message = "The primary datacenter must be one of the regions' datacenters."
  }
}

variable "health_check_interval_s" {
  description = "Route 53 health check interval in seconds (10 or 30): how fast an unhealthy region leaves DNS."
  type        = number
  default     = 10

  validation {
    condition     = contains([10, 30], var.health_check_interval_s)
    error_message = "health_check_interval_s is 10 or 30."
  }
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default     = {}
}
