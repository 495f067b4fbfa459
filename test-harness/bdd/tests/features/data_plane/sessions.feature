Feature: Sessions group the turns of a conversation
  A session id ties turns together: they land where the session's KV cache is, count
  against the session's token budget, and the session can be ended.

  Scenario: A session counts its turns and the tokens they used
    Given a mock pool
    When I submit a task "t1" in session "4d9f6e3a-1c63-4b2a-8f5d-7e8c9a0b1c32" with 4 tokens
    And I read the stream of "t1"
    And I submit a task "t2" in session "4d9f6e3a-1c63-4b2a-8f5d-7e8c9a0b1c32" with 4 tokens
    And I read the stream of "t2"
    And I GET "/v1/sessions/4d9f6e3a-1c63-4b2a-8f5d-7e8c9a0b1c32"
    Then the response status is 200
    And the JSON at "/turns" is "2"

  Scenario: An ended session is gone
    Given a mock pool
    When I submit a task "t1" in session "5e0a7f4b-2d74-4c3b-9a6e-8f9d0b1c2d43" with 4 tokens
    And I read the stream of "t1"
    And I DELETE "/v1/sessions/5e0a7f4b-2d74-4c3b-9a6e-8f9d0b1c2d43"
    Then the response status is 204
    When I GET "/v1/sessions/5e0a7f4b-2d74-4c3b-9a6e-8f9d0b1c2d43"
    Then the response status is 404

  Scenario: A turn that would overrun the session's budget is refused, naming the quota
    Given the server setting session_token_budget is 10
    And a mock pool
    When I submit a task "t1" in session "6f1b8a5c-3e85-4d4c-8b7f-9a0e1c2d3e54" with 8 tokens
    And I submit a task "t2" in session "6f1b8a5c-3e85-4d4c-8b7f-9a0e1c2d3e54" with 8 tokens
    Then the response status is 429
    And the error code is "QUOTA_EXCEEDED"
    And the JSON at "/policy_label" is "quota-session-budget"
