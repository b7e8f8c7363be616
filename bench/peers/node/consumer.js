// The Node peer: sqs-consumer (batchSize 10, handleMessageBatch) on @aws-sdk/client-sqs.
//
// Usage: node consumer.js ENDPOINT_URL QUEUE_URL
//
// A no-op batch handler that reads the event attribute and the body of every message and
// returns them all, so sqs-consumer deletes the batch with DeleteMessageBatch. Runs until the
// bench sends SIGTERM.
"use strict";

const { Consumer } = require("sqs-consumer");
const { SQSClient } = require("@aws-sdk/client-sqs");

const [endpoint, queueUrl] = process.argv.slice(2);

const sqs = new SQSClient({
  endpoint,
  region: "us-east-1",
  credentials: { accessKeyId: "bench", secretAccessKey: "bench" },
});

const app = Consumer.create({
  queueUrl,
  sqs,
  batchSize: 10,
  waitTimeSeconds: 20,
  messageAttributeNames: ["All"],
  messageSystemAttributeNames: ["All"],
  handleMessageBatch: async (messages) =>
    messages.filter(
      (m) => m.MessageAttributes.iniesta_pass.StringValue && m.Body !== undefined,
    ),
});

app.on("error", (err) => console.error("error:", err.message));
app.on("processing_error", (err) => console.error("processing_error:", err.message));
process.on("SIGTERM", () => process.exit(0));
app.start();
