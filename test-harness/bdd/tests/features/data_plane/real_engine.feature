@real-engine
Feature: A real engine
  The bundled Gemma 3 270M on llama-server, through the whole path.

  Scenario: The counting gate: the model continues a count from a fresh random start
    Given the bundled llama.cpp model
    When I submit a task "count" continuing a fresh count with 6 tokens
    And I read the stream of "count"
    Then the stream of "count" ends with end
    And the first number in the text of "count" continues its count
