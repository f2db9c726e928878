# This region's records in Consul's KV (the region router's directory), written to the region's
# own datacenter. The records come from the topology module, so the cloud and a laptop's local
# cluster read the same region map.

resource "consul_keys" "directory" {
  datacenter = var.consul_datacenter

  dynamic "key" {
    for_each = var.directory_records
    content {
      path   = key.key
      value  = key.value
      delete = true
    }
  }
}
