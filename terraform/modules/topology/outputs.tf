output "directory" {
  description = "The directory records (regions, ledger_nodes, overrides), in the schema of the local YAML directory file."
  value = {
    regions      = local.directory_regions
    ledger_nodes = local.directory_ledger_nodes
    overrides    = {}
  }
}

output "consul_kv" {
  description = "Consul KV records of the directory, key to JSON value, under kv_prefix; each region module writes its own."
  value       = local.consul_kv
}

output "region_codes" {
  description = "The region codes, sorted."
  value       = local.codes
}

output "peers" {
  description = "Each region's peers (every other region), by region code."
  value       = { for record in local.directory_regions : record.code => record.peers }
}
