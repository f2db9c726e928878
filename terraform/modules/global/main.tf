# The global layer: one public hostname, answered by latency-based DNS with the nearest healthy
# region's gateway. A region that fails its health check (its gateway's /health/ready, through
# its load balancer) leaves the answers; a draining or down region is not in them at all.
# Any gateway serves any account, so the nearest healthy one is always a right answer.

locals {
  serving = { for code, region in var.regions : code => region if region.status == "active" }
}

resource "aws_route53_health_check" "gateway" {
  for_each          = local.serving
  type              = "HTTPS"
  fqdn              = each.value.load_balancer.dns_name
  port              = 443
  resource_path     = "/health/ready"
  request_interval  = var.health_check_interval_s
  failure_threshold = 3
  measure_latency   = true
  enable_sni        = true
  tags              = merge(var.tags, { Name = "regiongate-${each.key}-gateway" })
}

resource "aws_route53_record" "gateway" {
  #checkov:skip=CKV2_AWS_23:The alias is the region module's load balancer, passed in as var.regions[*].load_balancer; checkov's graph cannot follow a resource through a module input.
  for_each        = local.serving
  zone_id         = var.hosted_zone_id
  name            = var.hostname
  type            = "A"
  set_identifier  = each.key
  health_check_id = aws_route53_health_check.gateway[each.key].id

  latency_routing_policy {
    region = each.value.aws_region
  }

  alias {
    name                   = each.value.load_balancer.dns_name
    zone_id                = each.value.load_balancer.zone_id
    evaluate_target_health = true
  }
}
