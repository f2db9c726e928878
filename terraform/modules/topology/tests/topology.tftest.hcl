# terraform test: the topology module, offline (it uses only Terraform's builtin provider).

variables {
  regions = {
    eu = { currencies = ["EUR", "GBP"] }
    us = { currencies = ["USD"], ledger_nodes = 3 }
    ap = { currencies = ["USD", "GCOIN"], status = "draining" }
  }
}

run "directory_matches_the_region_map" {
  command = apply

  assert {
    condition     = output.region_codes == tolist(["ap", "eu", "us"])
    error_message = "every region in the map is in the directory, sorted"
  }
  assert {
    condition     = length(output.directory.ledger_nodes) == 7
    error_message = "ledger nodes per region come from ledger_nodes (default 2)"
  }
  assert {
    condition     = jsonencode(output.peers["eu"]) == jsonencode(["ap", "us"])
    error_message = "every region peers with every other one"
  }
  assert {
    condition     = [for r in output.directory.regions : r.status if r.code == "ap"][0] == "draining"
    error_message = "a region's status is carried through"
  }
  assert {
    condition     = jsonencode(jsondecode(output.consul_kv["regiongate/regions/us"]).currencies) == jsonencode(["USD"])
    error_message = "the Consul records carry the same region records"
  }
  assert {
    condition     = output.directory.overrides == {}
    error_message = "re-home overrides are operational data, never provisioned"
  }
}

run "adding_a_region_is_one_map_entry" {
  command = apply

  variables {
    regions = {
      eu = { currencies = ["EUR"] }
      us = { currencies = ["USD"] }
      ap = { currencies = ["USD"] }
      sa = { currencies = ["BRL"] }
    }
  }

  assert {
    condition     = contains(output.peers["eu"], "sa") && length(output.peers["sa"]) == 3
    error_message = "a new region peers with all others, and they with it"
  }
}

run "a_bad_region_code_is_refused" {
  command = plan

  variables {
    regions = {
      "EU-West" = { currencies = ["EUR"] }
    }
  }

  expect_failures = [var.regions]
}

run "a_bad_currency_is_refused" {
  command = plan

  variables {
    regions = {
      eu = { currencies = ["euro"] }
    }
  }

  expect_failures = [var.regions]
}
