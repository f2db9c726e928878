terraform {
  # Only Terraform's builtin provider: this module runs offline, in CI and on a laptop.
  required_version = ">= 1.9.0, < 2.0.0"
}
