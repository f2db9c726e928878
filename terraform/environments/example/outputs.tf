output "directory" {
  description = "The directory records, in the local YAML directory's schema (what regiongate local up --topology reads)."
  value       = module.topology.directory
}

output "gateways" {
  description = "Each region's gateway load balancer DNS name."
  value       = { for code, region in module.region : code => region.load_balancer.dns_name }
}

output "hostname" {
  description = "The public API hostname, routed to the nearest healthy region."
  value       = module.global.hostname
}

output "consul_federation" {
  description = "Consul WAN federation inputs for each region's servers."
  value       = module.global.consul_federation
}
