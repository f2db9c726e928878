terraform {
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.0.0, < 7.0.0"
    }
    consul = {
      source  = "hashicorp/consul"
      version = ">= 2.21.0, < 3.0.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.6.0, < 4.0.0"
    }
  }

  # State holds the Redis AUTH token: keep it in an encrypted, access-logged backend, e.g.
  # backend "s3" { bucket = "...", key = "regiongate/example.tfstate", encrypt = true,
  #                use_lockfile = true }
}

# One AWS provider for every region: each resource names its own region (provider 6.x).
# Credentials come from the environment (AWS_PROFILE, a role), never from variables.
provider "aws" {
  region = var.home_aws_region
}

# CONSUL_HTTP_ADDR and CONSUL_HTTP_TOKEN come from the environment; every region's records are
# written to its own datacenter through WAN federation.
provider "consul" {}
