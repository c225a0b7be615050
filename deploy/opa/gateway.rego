# Budget and quota decisions of the Soma Gateway's policy stage (Rego v1).
#
# Queried at POST /v1/data/soma/gateway/decision with
#   input = {tenant: {name, fail_open}, principal, persona, model,
#            usage:   {tokens_used, tokens_reserved, seconds_to_reset},
#            limits:  {tokens_per_day, models_allow, models_deny, max_output_tokens,
#                      max_context_tokens},
#            request: {kind, action, estimated_tokens, model_calls, prompt_tokens}}
# `estimated_tokens` is all the turn may spend, and what the policy stage reserves:
# model_calls x (prompt_tokens + max_output_tokens) (gateway_runtime/tokens.py).
# and answers {allow, reason, message, retry_after}: `reason` is a machine-readable code,
# `message` tells a person what happened and what to do, `retry_after` is in seconds
# (0 = retrying will not help). When several rules deny, the lowest `rank` wins, so the
# answer is the same whatever order the rules are evaluated in.
#
# The budget rule decides from a snapshot of the counters. The policy stage then reserves
# the tokens with one atomic Postgres statement that checks the same inequality, so
# concurrent turns cannot overspend between this decision and the reservation
# (docs/security.md).
package soma.gateway

default decision := {
	"allow": false,
	"reason": "policy_incomplete_input",
	"message": "the policy could not decide: its input is incomplete",
	"retry_after": 0,
}

decision := {"allow": true, "reason": "ok", "message": "", "retry_after": 0} if {
	input_complete
	count(denials) == 0
}

decision := {"allow": false, "reason": d[1], "message": d[2], "retry_after": d[3]} if {
	input_complete
	count(denials) > 0
	d := sort([[x.rank, x.reason, x.message, x.retry_after] | some x in denials])[0]
}

input_complete if {
	is_string(input.tenant.name)
	is_number(input.usage.tokens_used)
	is_number(input.usage.tokens_reserved)
	is_number(input.limits.tokens_per_day)
	is_number(input.request.estimated_tokens)
}

# ---- models -----------------------------------------------------------------------------

model_named if input.model != ""

model_denied if {
	model_named
	some pattern in input.limits.models_deny
	glob.match(pattern, null, input.model)
}

model_allowed if {
	some pattern in object.get(input.limits, "models_allow", ["*"])
	glob.match(pattern, null, input.model)
}

denials contains {
	"rank": 1,
	"reason": "model_not_allowed",
	"message": sprintf("model %q is denied for tenant %q", [input.model, input.tenant.name]),
	"retry_after": 0,
} if model_denied

denials contains {
	"rank": 1,
	"reason": "model_not_allowed",
	"message": sprintf("model %q is not in tenant %q's allow-list", [input.model, input.tenant.name]),
	"retry_after": 0,
} if {
	model_named
	not model_denied
	not model_allowed
}

# ---- daily token budget (per persona; 0 = unlimited) ---------------------------------------

budget := input.limits.tokens_per_day

budget_limited if budget > 0

remaining := budget - input.usage.tokens_used - input.usage.tokens_reserved

denials contains {
	"rank": 2,
	"reason": "request_exceeds_budget",
	"message": sprintf(
		"this turn needs about %d tokens but persona %q of tenant %q has a daily budget of %d",
		[input.request.estimated_tokens, input.persona, input.tenant.name, budget],
	),
	"retry_after": 0,
} if {
	budget_limited
	input.request.estimated_tokens > budget
}

denials contains {
	"rank": 3,
	"reason": "budget_exhausted",
	"message": sprintf(
		"persona %q of tenant %q has %d of %d daily tokens left (%d held by turns in flight); this turn needs about %d. The budget resets at 00:00 UTC.",
		[input.persona, input.tenant.name, max([remaining, 0]), budget, input.usage.tokens_reserved, input.request.estimated_tokens],
	),
	"retry_after": input.usage.seconds_to_reset,
} if {
	budget_limited
	input.request.estimated_tokens <= budget
	input.request.estimated_tokens > remaining
}
