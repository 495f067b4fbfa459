@real-engine
Feature: A real engine
  The bundled Gemma 3 270M on llama-server, through the whole path.

  Scenario: The Haiku gate: the model repeats a fresh code it was given
    Given the bundled llama.cpp model
    When I submit a task "haiku" with prompt "A haiku written at seven minutes past the hour.\nThe secret code is 714954. Repeat the secret code: The secret code is" and 12 tokens
    And I read the stream of "haiku"
    Then the stream of "haiku" ends with end
    And the text of "haiku" contains "714954"
