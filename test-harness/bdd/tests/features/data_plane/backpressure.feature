Feature: Backpressure when a queue is full
  Each pool's queue is bounded. When it is full the pool's policy decides: refuse the
  newcomer (`reject`), evict the oldest batch task (`drop-lru`), or let an interactive
  task shed the newest batch task (`shed-low-priority`). Refusals are 429s that say when
  to come back.

  Scenario: Under reject, a task arriving at a full queue gets a 429 with when to retry
    Given a mock pool with:
      | slots          | 1      |
      | queue_capacity | 1      |
      | queue_policy   | reject |
      | tokens         | 100    |
      | tokens_per_sec | 20     |
    When I submit a task "running" with 100 tokens
    And I submit a task "waiting" with 4 tokens
    And I submit a task "refused" with 4 tokens
    Then the response status is 429
    And the error code is "ADMISSION_REJECT"
    And the JSON at "/policy_label" is "reject"
    And the response carries header "Retry-After"
    And the response carries header "X-Backoff-Ms"

  Scenario: Under drop-lru, the oldest waiting batch task makes room and is told why
    Given a mock pool with:
      | slots          | 1        |
      | queue_capacity | 1        |
      | queue_policy   | drop-lru |
      | tokens         | 100      |
      | tokens_per_sec | 20       |
    When I submit a task "running" with 100 tokens
    And I submit a batch task "old" with 4 tokens
    And I submit a task "new" with 4 tokens
    Then the response status is 202
    When I read the stream of "old"
    Then the stream of "old" ends with error "QUEUE_FULL_DROP_LRU"
    And the stream of "old" has only its terminal frame

  Scenario: Under shed-low-priority, an interactive task sheds a waiting batch task
    Given a mock pool with:
      | slots          | 1                 |
      | queue_capacity | 1                 |
      | queue_policy   | shed-low-priority |
      | tokens         | 100               |
      | tokens_per_sec | 20                |
    When I submit a task "running" with 100 tokens
    And I submit a batch task "batch" with 4 tokens
    And I submit a interactive task "urgent" with 4 tokens
    Then the response status is 202
    When I read the stream of "batch"
    Then the stream of "batch" ends with error "ADMISSION_REJECT"

  Scenario: Under shed-low-priority, a batch task arriving at a full queue is refused
    Given a mock pool with:
      | slots          | 1                 |
      | queue_capacity | 1                 |
      | queue_policy   | shed-low-priority |
      | tokens         | 100               |
      | tokens_per_sec | 20                |
    When I submit a task "running" with 100 tokens
    And I submit a batch task "waiting" with 4 tokens
    And I submit a batch task "refused" with 4 tokens
    Then the response status is 429
    And the JSON at "/policy_label" is "shed-low-priority"
