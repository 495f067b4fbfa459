Feature: Fair shares between tenants under saturation
  When tenants keep more work waiting than the pool can run, each is served tokens in
  proportion to its weight, and the `admission_share` gauge says so.

  Background:
    Given these API keys:
      | tenant | role   |
      | bronze | client |
      | silver | client |
      | gold   | client |
      | ops    | admin  |
    And tenant "bronze" has weight 1
    And tenant "silver" has weight 2
    And tenant "gold" has weight 5
    And a mock pool with:
      | slots          | 2   |
      | tokens         | 8   |
      | tokens_per_sec | 400 |
      | queue_capacity | 64  |

  Scenario: Backlogged tenants are served in proportion to their weights
    When bronze, silver and gold each keep 6 batch tasks of 8 tokens waiting for 4000 ms
    Then the tokens served to bronze, silver and gold follow the weights 1:2:5 within 0.05
    And the admission_share gauges of bronze, silver and gold follow the weights 1:2:5 within 0.05
