variable "regions" {
  description = "The regions, by short code (eu, us, ap...): the one map everything else derives from. Adding a region is one entry here."
  type = map(object({
    status       = optional(string, "active")
    currencies   = list(string)
    ledger_nodes = optional(number, 2)
  }))

  validation {
    condition     = length(var.regions) >= 1
    error_message = "At least one region is needed."
  }
  validation {
    condition     = alltrue([for code in keys(var.regions) : can(regex("^[a-z]{2,8}$", code))])
    error_message = "Region codes are 2 to 8 lower-case letters (they prefix account ids)."
  }
  validation {
    condition     = alltrue([for r in values(var.regions) : contains(["active", "draining", "down"], r.status)])
    error_message = "A region's status is active, draining or down."
  }
  validation {
    condition = alltrue(flatten([
      for r in values(var.regions) : [for c in r.currencies : can(regex("^[A-Z][A-Z0-9]{2,7}$", c))]
    ]))
    error_message = "Currencies are ISO 4217 codes or configured units: an upper-case letter, then 2 to 7 upper-case letters or digits."
  }
  validation {
    condition     = alltrue([for r in values(var.regions) : length(r.currencies) >= 1])
    error_message = "Every region serves at least one currency."
  }
  validation {
    condition     = alltrue([for r in values(var.regions) : r.ledger_nodes >= 1 && r.ledger_nodes <= 64 && floor(r.ledger_nodes) == r.ledger_nodes])
    error_message = "ledger_nodes is a whole number from 1 to 64."
  }
}

variable "ledger_url_template" {
  description = "Each ledger node's URL, from its region code and its node number (format(template, code, number))."
  type        = string
  default     = "https://ledger-%[2]d.%[1]s.regiongate.internal:8101"

  validation {
    condition     = can(regex("^https?://", var.ledger_url_template))
    error_message = "ledger_url_template must be an http or https URL template."
  }
}

variable "kv_prefix" {
  description = "The Consul KV prefix of the directory's records; the region router reads the same prefix."
  type        = string
  default     = "regiongate/"

  validation {
    condition     = can(regex("^[a-z0-9_-]+(/[a-z0-9_-]+)*/$", var.kv_prefix))
    error_message = "kv_prefix is a path of lower-case segments that ends with a slash."
  }
}
