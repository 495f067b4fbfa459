Feature: Keys, roles, tenants and quotas
  With API keys configured, every request names its key. A client key reaches the data
  plane only; an admin key reaches everything. Tenants see only their own tasks, and
  their quotas are enforced at admission.

  Background:
    Given these API keys:
      | tenant | role   |
      | alice  | client |
      | bob    | client |
      | ops    | admin  |
    And tenant "alice" has max_concurrent 1
    And a mock pool with:
      | tokens         | 100 |
      | tokens_per_sec | 20  |

  Scenario: A request without a key is unauthenticated
    When I GET "/v1/capabilities"
    Then the response status is 401
    And the error code is "UNAUTHENTICATED"
    And the response carries header "WWW-Authenticate"

  Scenario: A client key may not use the control plane
    When alice GETs "/v1/pools"
    Then the response status is 403
    And the error code is "FORBIDDEN"

  Scenario: An admin key may
    When ops GETs "/v1/pools"
    Then the response status is 200

  Scenario: A tenant cannot see another tenant's task
    When alice submits a task "mine" with 4 tokens
    And bob GETs "/v1/tasks/<mine>"
    Then the response status is 404
    When alice GETs "/v1/tasks/<mine>"
    Then the response status is 200
    And the JSON at "/tenant" is "alice"

  Scenario: A tenant over its concurrency quota is refused, naming the quota
    When alice submits a task "one" with 100 tokens
    And alice submits a task "two" with 4 tokens
    Then the response status is 429
    And the error code is "QUOTA_EXCEEDED"
    And the JSON at "/policy_label" is "quota-concurrency"
    And the response carries header "Retry-After"

  Scenario: Capabilities show the calling tenant its quotas
    When alice GETs "/v1/capabilities"
    Then the JSON at "/tenant/tenant" is "alice"
    And the JSON at "/tenant/quotas/max_concurrent" is "1"
