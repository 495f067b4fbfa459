Feature: Submitting tasks and reading their streams
  A client submits a generation task and gets 202 with a task id at once. The task's
  events are read over Server-Sent Events: `started`, its tokens, then exactly one
  `end` or `error`, and can be canceled queued or running. How streams are read
  (resume, many readers, keep-alives, abandonment) is in `sse/streams.feature`.

  Scenario: A task is admitted and streams its tokens to the end
    Given a mock pool with:
      | tokens         | 6   |
      | tokens_per_sec | 200 |
    When I submit a task "a" with 6 tokens
    Then the response status is 202
    And the response carries header "Location"
    And the response carries header "X-Correlation-Id"
    And the admission of "a" has queue position 0
    When I read the stream of "a"
    Then the stream of "a" starts with started
    And the stream of "a" has 6 tokens
    And the stream of "a" ends with end
    And "a" is completed

  Scenario: A task that finds every slot busy is told its honest queue position
    Given a mock pool with:
      | slots          | 1  |
      | tokens         | 10 |
      | tokens_per_sec | 20 |
    When I submit a task "first" with 10 tokens
    And I submit a task "second" with 4 tokens
    Then the admission of "second" has queue position 1
    When I read the stream of "second"
    Then the stream of "second" ends with end

  Scenario: A submission repeated with the same Idempotency-Key names the task admitted before
    Given a mock pool
    When I submit a task "a" with 4 tokens and Idempotency-Key "order-42"
    Then the response status is 202
    When I submit a task "again" with 4 tokens and Idempotency-Key "order-42"
    Then the response status is 202
    And "a" and "again" are the same task
    When I submit a task "other" with 4 tokens and Idempotency-Key "order-43"
    Then "a" and "other" are different tasks
    When I read the stream of "again"
    Then the stream of "again" has 4 tokens
    And the stream of "again" ends with end

  Scenario: A queued task that is canceled ends with only its terminal frame
    Given a mock pool with:
      | slots          | 1   |
      | tokens         | 100 |
      | tokens_per_sec | 20  |
    When I submit a task "running" with 100 tokens
    And I submit a task "waiting" with 4 tokens
    And I cancel "waiting"
    Then the response status is 204
    When I read the stream of "waiting"
    Then the stream of "waiting" has only its terminal frame
    And the stream of "waiting" ends with finish reason "canceled"

  Scenario: A running task that is canceled stops and ends with finish reason canceled
    Given a mock pool with:
      | tokens         | 100 |
      | tokens_per_sec | 20  |
    When I submit a task "a" with 100 tokens
    And I wait until "a" is running
    And I cancel "a"
    And I read the stream of "a"
    Then the stream of "a" ends with end
    And the stream of "a" ends with finish reason "canceled"
