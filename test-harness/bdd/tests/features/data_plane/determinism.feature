Feature: Determinism toggles
  A task's seed is its own or derived from its id, and `determinism: strict` runs it at
  temperature 0 on the pool's pinned replica set: the same task asked twice gives the
  same text. (The real engine's journey is in `real_engine.feature`.)

  Background:
    Given a mock pool

  Scenario: Two strict runs with the same seed give the same text
    When I submit a task "a" with determinism strict, seed 7 and 8 tokens
    And I submit a task "b" with determinism strict, seed 7 and 8 tokens
    And I read the stream of "a"
    And I read the stream of "b"
    Then "a" and "b" have the same text
    And the started frame of "a" names seed 7

  Scenario: Another seed gives other text
    When I submit a task "a" with determinism best_effort, seed 7 and 8 tokens
    And I submit a task "b" with determinism best_effort, seed 8 and 8 tokens
    And I read the stream of "a"
    And I read the stream of "b"
    Then "a" and "b" have different text

  Scenario: Without a seed, the seed is derived from the task id
    When I submit a task "a" with determinism strict and 8 tokens
    And I read the stream of "a"
    Then the started frame of "a" names the seed derived from its id
