# Three regions of regiongate (the region map is in terraform.tfvars). Everything derives from
# var.regions: the directory records (topology), one region module per entry, and the global
# routing across them.

module "topology" {
  source = "../../modules/topology"
  regions = {
    for code, region in var.regions : code => {
      status       = region.status
      currencies   = region.currencies
      ledger_nodes = region.ledger_nodes
    }
  }
}

module "region" {
  source   = "../../modules/region"
  for_each = var.regions

  code              = each.key
  aws_region        = each.value.aws_region
  zone_ids          = each.value.zone_ids
  cidr_block        = each.value.cidr_block
  peer_cidr_blocks  = [for code, other in var.regions : other.cidr_block if code != each.key]
  consul_datacenter = each.value.consul_datacenter
  certificate_arn   = each.value.certificate_arn
  images            = var.images
  directory_records = { for key, value in module.topology.consul_kv : key => value if endswith(key, "/regions/${each.key}") }
  tags              = var.tags
}

module "global" {
  source = "../../modules/global"

  regions = {
    for code, region in var.regions : code => {
      aws_region    = region.aws_region
      status        = region.status
      load_balancer = module.region[code].load_balancer
    }
  }
  hosted_zone_id = var.hosted_zone_id
  hostname       = var.hostname
  consul = {
    primary_datacenter = var.consul_primary_datacenter
    datacenters        = { for code, region in var.regions : code => region.consul_datacenter }
    mesh_gateways      = { for code, region in var.regions : code => region.mesh_gateways }
  }
  tags = var.tags
}
