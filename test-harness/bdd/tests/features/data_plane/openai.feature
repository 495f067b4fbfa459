Feature: The OpenAI door
  Clients that speak OpenAI's API use the same queue; what the door does not serve is
  refused by name, in OpenAI's error shape.

  Background:
    Given a mock pool

  Scenario: A chat completion is answered with its usage
    When I POST "/v1/chat/completions" with '{"model": "mock-model", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}'
    Then the response status is 200
    And the JSON at "/object" is "chat.completion"
    And the JSON at "/usage/completion_tokens" is "4"
    And the response carries header "X-Orch-Task-Id"

  Scenario: More than one choice is refused, naming the parameter
    When I POST "/v1/chat/completions" with '{"model": "mock-model", "n": 2, "messages": [{"role": "user", "content": "hi"}]}'
    Then the response status is 400
    And the JSON at "/error/param" is "n"
