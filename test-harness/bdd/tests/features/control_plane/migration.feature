Feature: A generation whose engine fails mid-stream continues on another replica
  When an engine dies, resets or hangs after a task streamed tokens, the task moves to
  another replica (or the same one restarted) and goes on from its tokens: the client
  reads one stream with every token once, in order, and a `metrics` frame saying it
  moved, from where and why.

  Scenario: A task on a replica whose engine fails continues on the other with the same text
    Given a mock pool with:
      | replicas          | 2            |
      | slots             | 1            |
      | tokens_per_sec    | 100          |
      | fail_after_tokens | 3            |
      | faults_only_on    | ["p-r0"]     |
    When I submit a task "a" with determinism best_effort, seed 11 and 8 tokens
    And I submit a task "b" with determinism best_effort, seed 11 and 8 tokens
    And I read the stream of "a"
    And I read the stream of "b"
    Then the stream of "a" ends with end
    And the stream of "b" ends with end
    And the stream of "a" has 8 tokens
    And the stream of "b" has 8 tokens
    And "a" and "b" have the same text
    And exactly one of "a" and "b" moved to another replica, once

  Scenario: When every replica's engine fails at the same token, the limit ends the task
    Given a mock pool with:
      | replicas          | 2 |
      | slots             | 1 |
      | fail_after_tokens | 3 |
      | migration_limit   | 1 |
    When I submit a task "a" with 8 tokens
    And I read the stream of "a"
    Then the stream of "a" has 3 tokens
    And the stream of "a" ends with error "WORKER_RESET"
