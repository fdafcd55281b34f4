"""Every span attribute and carrier key otel-delivery writes, in one place.

Standard OpenTelemetry semantic-convention names are used where one fits
(messaging for inbound and send, GenAI for the agent run, ``error.type``);
everything project-specific lives under the ``otel_delivery.`` namespace.
The README's attribute table is checked against this module by a test.
"""

from __future__ import annotations

from typing import Final

# -- what kind of step a span is (our namespace) -----------------------------------
KIND: Final = "otel_delivery.kind"
KIND_INBOUND: Final = "inbound"
KIND_AI_RUN: Final = "ai_run"
KIND_DELIVER: Final = "deliver"
KIND_ENQUEUE: Final = "enqueue"
KIND_RECEIPT: Final = "receipt"

# -- per-call values (our namespace) -------------------------------------------------
CHANNEL: Final = "otel_delivery.channel"
RECIPIENT: Final = "otel_delivery.recipient"
SENDER: Final = "otel_delivery.sender"
INBOUND_ID: Final = "otel_delivery.inbound_id"
DELIVERY_ID: Final = "otel_delivery.delivery_id"
ATTEMPT: Final = "otel_delivery.attempt"
MAX_ATTEMPTS: Final = "otel_delivery.max_attempts"
CONVERSATION: Final = "otel_delivery.conversation"
PART: Final = "otel_delivery.part"  # which part of a reply sent in several messages

# -- outcomes (our namespace) ----------------------------------------------------------
OUTCOME: Final = "otel_delivery.outcome"  # delivered | failed | interrupted (deliver); ok | failed
FAILURE_CLASS: Final = "otel_delivery.failure_class"  # permanent | transient
RETRY_AFTER_SECONDS: Final = "otel_delivery.retry_after_seconds"  # the service's hint
FINAL: Final = "otel_delivery.final"  # bool: no retry will follow this attempt
ERROR_MESSAGE: Final = "otel_delivery.error.message"  # truncated to ERROR_TEXT_LIMIT
PROVIDER_MESSAGE_ID: Final = "otel_delivery.provider_message_id"
REPLY_PRODUCED: Final = "otel_delivery.reply_produced"  # bool, on ai_run
RECEIPT_STATUS: Final = "otel_delivery.receipt.status"  # sent | delivered | read | failed

# -- on the span links a retry carries to earlier attempts (our namespace) ---------------
LINK: Final = "otel_delivery.link"
LINK_PRIOR_ATTEMPT: Final = "prior_attempt"

# -- OpenTelemetry semantic conventions -------------------------------------------------
ERROR_TYPE: Final = "error.type"
MESSAGING_SYSTEM: Final = "messaging.system"
MESSAGING_OPERATION_TYPE: Final = "messaging.operation.type"
MESSAGING_OPERATION_NAME: Final = "messaging.operation.name"
MESSAGING_DESTINATION_NAME: Final = "messaging.destination.name"
MESSAGING_MESSAGE_ID: Final = "messaging.message.id"
MESSAGING_CONVERSATION_ID: Final = "messaging.message.conversation_id"
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"

# -- keys written into a carrier (a message's metadata dict, a queued entry) ---------------
CARRIER_TRACEPARENT: Final = "traceparent"
CARRIER_TRACESTATE: Final = "tracestate"
CARRIER_INBOUND_ID: Final = "otel-delivery-inbound-id"
CARRIER_CHANNEL: Final = "otel-delivery-channel"
CARRIER_CONVERSATION: Final = "otel-delivery-conversation"
CARRIER_PRIOR_ATTEMPTS: Final = "otel-delivery-prior-attempts"
CARRIER_DELIVERY_ID: Final = "otel-delivery-delivery-id"

# Limits, documented in the README.
ERROR_TEXT_LIMIT: Final = 512
ATTRIBUTE_VALUE_LIMIT: Final = 256
PRIOR_ATTEMPT_LINKS_LIMIT: Final = 16
