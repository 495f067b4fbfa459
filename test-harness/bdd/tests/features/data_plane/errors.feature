Feature: Errors a client can meet, each with its status and envelope
  Every refusal is an ErrorEnvelope (`code`, `message`, `retriable`, `correlation_id`,
  …) with the status of its code. Nothing is a panic, a hang or a 500.

  Background:
    Given a mock pool

  Scenario: An empty prompt is invalid
    When I submit the body '{"workload":"completion","model_ref":"mock-model","priority":"batch","prompt":"","max_tokens":4}'
    Then the response status is 400
    And the error code is "INVALID_PARAMS"

  Scenario: An unknown field is refused rather than ignored
    When I submit the body '{"workload":"completion","model_ref":"mock-model","priority":"batch","prompt":"hi","max_tokens":4,"temprature":1}'
    Then the response status is 400
    And the error code is "INVALID_PARAMS"

  Scenario: Malformed JSON is invalid
    When I submit the body "{oops"
    Then the response status is 400
    And the error code is "INVALID_PARAMS"

  Scenario: A body that is not JSON is an unsupported media type
    When I submit a task as "text/plain"
    Then the response status is 415
    And the error code is "INVALID_PARAMS"

  Scenario: A body over the limit is refused before it is read
    When I submit a task with a prompt of 2000000 bytes
    Then the response status is 413
    And the error code is "PAYLOAD_TOO_LARGE"

  Scenario: A prompt over the most characters is invalid, naming the field
    When I submit a task with a prompt of 300000 bytes
    Then the response status is 400
    And the error code is "INVALID_PARAMS"
    And the JSON at "/message" is "prompt: must be at most 262144 characters"

  Scenario: A model no pool serves is the client's mistake
    When I submit a task for model "no-such-model"
    Then the response status is 400
    And the error code is "INVALID_PARAMS"

  Scenario: An unknown task is not found
    When I GET "/v1/tasks/7d1a3f52-0c7e-4c9a-9a51-2d1f0e8b6c11"
    Then the response status is 404
    And the error code is "NOT_FOUND"

  Scenario: A task id the server still knows cannot be reused
    When I submit a task "a" with 4 tokens
    And I submit a task "b" with the same id as "a"
    Then the response status is 409
    And the error code is "CONFLICT"

  Scenario: A deadline that cannot be met is refused at admission
    When I submit a task "late" with a deadline of 1 ms
    Then the response status is 400
    And the error code is "DEADLINE_UNMET"

  Scenario: A pool that is draining takes no new work and says so
    When I POST "/v1/pools/p/drain" with '{"deadline_ms": 100}'
    And I submit a task "a" with 4 tokens
    Then the response status is 503
    And the error code is "POOL_UNREADY"
    And the response carries header "Retry-After"
