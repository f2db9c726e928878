terraform {
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    # 6.x: every regional resource takes a `region` argument, so one provider configuration
    # serves every region and this module can be instantiated with for_each over the region map.
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
}
