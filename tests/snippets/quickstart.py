from my_gateway import Reply, agent, api, outbox  # your gateway's own parts

import otel_delivery
from otel_delivery import arg

otel_delivery.configure(service_name="my-gateway")  # once, at start-up


@otel_delivery.inbound(channel="telegram", inbound_id=arg("msg.id"), carrier=arg("msg.meta"))
async def on_message(msg):
    reply = Reply(msg.chat_id, meta=dict(msg.meta))  # the reply carries the metadata on
    await run_agent(msg, reply)
    await outbox.put(reply)  # a sender task tries it, and retries, from the queue


@otel_delivery.ai_run(agent="support-bot", provider="openai", carrier=arg("msg.meta"),
                      reply_carrier=arg("reply.meta"))
async def run_agent(msg, reply):
    reply.text = await agent.answer(msg.text)
    return reply.text


@otel_delivery.deliver(channel="telegram", recipient=arg("reply.chat_id"),
                       carrier=arg("reply.meta"))
async def send_once(reply):  # one attempt: raise on failure, return the API result
    return await api.send_message(reply.chat_id, reply.text)
