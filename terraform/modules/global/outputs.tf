output "hostname" {
  description = "The public API hostname."
  value       = var.hostname
}

output "serving_regions" {
  description = "The regions whose gateways are in DNS (status active)."
  value       = sort(keys(local.serving))
}

output "consul_federation" {
  description = "Inputs for each region's Consul servers: primary_datacenter, and the other datacenters' mesh gateway addresses for WAN federation through mesh gateways."
  value = {
    primary_datacenter = var.consul.primary_datacenter
    datacenters        = var.consul.datacenters
    primary_gateways   = lookup(var.consul.mesh_gateways, [for code, dc in var.consul.datacenters : code if dc == var.consul.primary_datacenter][0], [])
    mesh_gateways      = var.consul.mesh_gateways
  }
}
