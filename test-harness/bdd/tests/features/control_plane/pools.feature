Feature: The control plane: pools, health, drain, reload, capabilities
  Operators see every pool and replica, drain and reload pools, and read what the
  server offers.

  Background:
    Given a mock pool

  Scenario: Pools list their replicas with their engine and slots
    When I GET "/v1/pools"
    Then the response status is 200
    And the JSON at "/pools/0/id" is "p"
    And the JSON at "/pools/0/engine" is "mock"
    And the JSON at "/pools/0/replicas/0/id" is "p-r0"

  Scenario: A pool's health says it is live and ready
    When I GET "/v1/pools/p/health"
    Then the response status is 200
    And the JSON at "/ready" is "true"
    And the JSON at "/draining" is "false"

  Scenario: An unknown pool is not found
    When I GET "/v1/pools/nope/health"
    Then the response status is 404
    And the error code is "NOT_FOUND"

  Scenario: Draining stops dispatch and reports what was in flight
    When I POST "/v1/pools/p/drain" with '{"deadline_ms": 100}'
    Then the response status is 202
    And the JSON at "/draining" is "true"

  Scenario: A reload onto the same model with a new sampler profile switches the pool
    When I POST "/v1/pools/p/reload" with '{"model_ref": "mock-model", "sampler_profile_version": "v2"}'
    Then the response status is 202
    And the JSON at "/sampler_profile_version" is "v2"

  Scenario: A reload onto a model the pool cannot load rolls back with a conflict
    When I POST "/v1/pools/p/reload" with '{"model_ref": "/nowhere/model.gguf"}'
    Then the response status is 409
    And the error code is "CONFLICT"

  Scenario: Capabilities name the API version and what the pools serve
    When I GET "/v1/capabilities"
    Then the response status is 200
    And the JSON at "/api_version" is "1.0.0"
    And the JSON at "/engines/0/placement" is "prefix"
