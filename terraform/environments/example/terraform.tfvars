# The region map: one entry per region. No secrets here (certificates are ARNs; keys and
# passwords live in Secrets Manager).

regions = {
  eu = {
    aws_region        = "eu-west-1"
    zone_ids          = ["euw1-az1", "euw1-az2", "euw1-az3"]
    cidr_block        = "10.10.0.0/16"
    currencies        = ["EUR", "GBP", "GCOIN"]
    consul_datacenter = "eu"
    certificate_arn   = "arn:aws:acm:eu-west-1:111122223333:certificate/00000000-0000-0000-0000-000000000001"
    mesh_gateways     = ["mesh-eu.regiongate.example.com:8443"]
  }
  us = {
    aws_region        = "us-east-1"
    zone_ids          = ["use1-az1", "use1-az2", "use1-az4"]
    cidr_block        = "10.20.0.0/16"
    currencies        = ["USD", "GCOIN"]
    consul_datacenter = "us"
    certificate_arn   = "arn:aws:acm:us-east-1:111122223333:certificate/00000000-0000-0000-0000-000000000002"
    mesh_gateways     = ["mesh-us.regiongate.example.com:8443"]
  }
  ap = {
    aws_region        = "ap-southeast-1"
    zone_ids          = ["apse1-az1", "apse1-az2", "apse1-az3"]
    cidr_block        = "10.30.0.0/16"
    currencies        = ["USD", "GCOIN"]
    consul_datacenter = "ap"
    certificate_arn   = "arn:aws:acm:ap-southeast-1:111122223333:certificate/00000000-0000-0000-0000-000000000003"
    mesh_gateways     = ["mesh-ap.regiongate.example.com:8443"]
  }
}

images = {
  gateway = "111122223333.dkr.ecr.eu-west-1.amazonaws.com/regiongate@sha256:0000000000000000000000000000000000000000000000000000000000000001"
  ledger  = "111122223333.dkr.ecr.eu-west-1.amazonaws.com/regiongate@sha256:0000000000000000000000000000000000000000000000000000000000000001"
}

hosted_zone_id            = "Z0123456789ABCDEFGHIJ"
hostname                  = "api.regiongate.example.com"
consul_primary_datacenter = "eu"
tags = {
  service = "regiongate"
  owner   = "platform"
}
