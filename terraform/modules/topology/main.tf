# The region map turned into the directory's records: the same schema as the local YAML
# directory (region_router/yaml_directory.py) and the Consul KV records the router watches
# (region_router/consul_directory.py). Every region peers with every other one.

locals {
  codes = sort(keys(var.regions))

  directory_regions = [
    for code in local.codes : {
      code       = code
      status     = var.regions[code].status
      peers      = [for peer in local.codes : peer if peer != code]
      currencies = var.regions[code].currencies
    }
  ]

  directory_ledger_nodes = flatten([
    for code in local.codes : [
      for number in range(1, var.regions[code].ledger_nodes + 1) : {
        region  = code
        node_id = "${code}-${number}"
        url     = format(var.ledger_url_template, code, number)
        healthy = true
      }
    ]
  ])

  consul_kv = {
    for record in local.directory_regions :
    "${var.kv_prefix}regions/${record.code}" => jsonencode({
      status     = record.status
      peers      = record.peers
      currencies = record.currencies
    })
  }
}
