Feature: Faults end tasks with a typed error, never silently
  An engine that dies, hangs or refuses ends each affected task with exactly one error
  frame naming what happened; a server that stops lets running work finish first.

  Scenario: With continuation off, an engine that dies mid-stream ends the task with a worker reset
    Given a mock pool with:
      | fail_after_tokens | 3 |
      | migration_limit   | 0 |
    When I submit a task "a" with 8 tokens
    And I read the stream of "a"
    Then the stream of "a" has 3 tokens
    And the stream of "a" ends with error "WORKER_RESET"
    And the stream of "a" did not move

  Scenario: With continuation off, an engine that stops sending tokens is cut off by the idle watchdog
    Given a mock pool with:
      | stall_after_tokens | 2   |
      | idle_timeout_ms    | 300 |
      | migration_limit    | 0   |
    When I submit a task "a" with 8 tokens
    And I read the stream of "a"
    Then the stream of "a" has 2 tokens
    And the stream of "a" ends with error "DECODE_TIMEOUT"

  Scenario: When every replica fails before the first token, the retries are used up
    Given a mock pool with:
      | replicas                   | 2    |
      | retries_before_first_token | 1    |
      | fail_before_first_token    | true |
    When I submit a task "a" with 4 tokens
    And I read the stream of "a"
    Then the stream of "a" ends with error "REPLICA_EXHAUSTED"
    And the stream of "a" has only its terminal frame

  Scenario: A task that waits longer than the pool's limit ends as unavailable
    Given a mock pool with:
      | slots               | 1   |
      | queue_wait_limit_ms | 200 |
      | tokens              | 100 |
      | tokens_per_sec      | 20  |
    When I submit a task "running" with 100 tokens
    And I submit a task "waiting" with 4 tokens
    And I read the stream of "waiting"
    Then the stream of "waiting" ends with error "POOL_UNAVAILABLE"

  Scenario: A server asked to stop refuses new work and lets running work finish
    Given a mock pool with:
      | tokens         | 10 |
      | tokens_per_sec | 20 |
    When I submit a task "a" with 10 tokens
    And I wait until "a" is running
    And the server is asked to stop
    And I submit a task "b" with 4 tokens
    Then the response status is 503
    When I read the stream of "a"
    Then the stream of "a" ends with end
    And the stream of "a" has 10 tokens
