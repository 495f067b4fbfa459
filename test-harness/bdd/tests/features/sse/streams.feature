Feature: Server-Sent Events streams
  A task's frames are kept while its record lives, so a stream can be opened before
  the task starts (it waits with keep-alive comments), read by many readers, resumed
  after the last frame a reader saw, and a stream nobody reads any more ends its task.

  Scenario: A reader that reconnects resumes after the last frame it saw
    Given a mock pool
    When I submit a task "a" with 6 tokens
    And I read the stream of "a"
    And I read the stream of "a" after frame 3
    Then the resumed stream of "a" starts at frame 4

  Scenario: Many readers of one task see the same frames
    Given a mock pool
    When I submit a task "a" with 8 tokens
    And two readers read the stream of "a"
    Then both readers saw the same frames

  Scenario: A stream opened while its task waits gets keep-alive comments first
    Given a mock pool with:
      | slots          | 1   |
      | tokens         | 100 |
      | tokens_per_sec | 20  |
    When I submit a task "running" with 100 tokens
    And I submit a task "waiting" with 4 tokens
    Then the raw stream of "waiting" shows at least 2 keep-alive comments within 900 ms before any frame
    When I cancel "running"
    And I read the stream of "waiting"
    Then the stream of "waiting" ends with end

  Scenario: A stream nobody reads any more is canceled after the grace period
    Given the server setting stream_grace_ms is 300
    And a mock pool with:
      | tokens         | 100 |
      | tokens_per_sec | 20  |
    When I submit a task "a" with 100 tokens
    And I open the stream of "a" and go away
    Then "a" becomes canceled within 3000 ms
