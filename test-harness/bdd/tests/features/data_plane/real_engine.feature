@real-engine
Feature: A real engine
  The bundled Gemma 3 270M on llama-server, through the whole path.

  Scenario: The counting gate: the model continues a count from a fresh random start
    Given the bundled llama.cpp model
    When I submit a task "count" continuing a fresh count with 6 tokens
    And I read the stream of "count"
    Then the stream of "count" ends with end
    And the first number in the text of "count" continues its count

  Scenario: Two strict runs with the same seed give the same text on the real engine
    Given the bundled llama.cpp model
    When I submit a task "a" with determinism strict, seed 11 and 16 tokens
    And I read the stream of "a"
    And I submit a task "b" with determinism strict, seed 11 and 16 tokens
    And I read the stream of "b"
    Then the stream of "b" ends with end
    And "a" and "b" have the same text
