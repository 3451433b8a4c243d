// One useChat approval round trip through the AI SDK's own client: its transport posts the
// chat and parses the UI message stream (validating every chunk), `readUIMessageStream`
// builds the message, as useChat does; the tool part's approval is answered the way
// `addToolApprovalResponse` answers it, and the chat is sent again.
// Usage: node approval.mjs <api url> <chat id> <approved: true|false> <agent>; prints JSON.
import {
  DefaultChatTransport,
  lastAssistantMessageIsCompleteWithApprovalResponses,
  readUIMessageStream,
} from "ai";

const [api, chatId, approved, agent] = process.argv.slice(2);
const transport = new DefaultChatTransport({ api, body: { agent } });
const user = { id: "u1", role: "user", parts: [{ type: "text", text: "Send 5" }] };

async function send(messages, message) {
  const stream = await transport.sendMessages({
    chatId, messages, trigger: "submit-message", messageId: undefined, abortSignal: undefined,
  });
  let last = message;
  const errors = [];
  for await (const m of readUIMessageStream({
    message, stream, onError: (e) => errors.push(String(e)), terminateOnError: true,
  })) {
    last = m;
  }
  if (errors.length) throw new Error(errors.join("; "));
  return structuredClone(last);
}

const first = await send([user], undefined);
const asked = first.parts.find((p) => p.type === "tool-transfer");
if (!asked?.approval) throw new Error(`no approval asked: ${JSON.stringify(first.parts)}`);
const before = { state: asked.state, approval: asked.approval, input: asked.input };
asked.state = "approval-responded"; // what addToolApprovalResponse does
asked.approval = { id: asked.approval.id, approved: approved === "true", reason: "checked" };
const messages = [user, first];
const resend = lastAssistantMessageIsCompleteWithApprovalResponses({ messages });
const second = await send(messages, structuredClone(first));
console.log(JSON.stringify({
  first: { id: first.id, parts: first.parts.map((p) => p.type) },
  asked: before,
  resend,
  second: {
    id: second.id,
    parts: second.parts.map((p) => ({ type: p.type, state: p.state, text: p.text, output: p.output })),
  },
}));
