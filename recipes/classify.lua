-- classify: sequence classification (sentiment) with LoRA on a BERT classifier; the head trains in full.
--
--   ftl run recipes/classify.lua [model=textattack/bert-base-uncased-SST-2] [steps=60] [lr=1e-3]
--     [r=8] [batch_size=8] [max_len=128] [seed=1]
--
-- `model=` is a BERT sequence-classification checkpoint (an HF directory with
-- BertForSequenceClassification and tokenizer.json, or a hub id in the local Hugging Face cache)
-- with at least 2 labels. data/sentiment.jsonl holds {"text": ..., "label": 0|1} rows (0
-- negative, 1 positive); a label may also be a name from the model's label2id. LoRA on the
-- attention projections; the classifier head is trained in full and saved with the adapter (as
-- PEFT's SEQ_CLS task does). Prints held-out loss and accuracy before and after, and writes the
-- adapter in PEFT's format to OUT/adapter.
local ftl = require("ftl")
local presets = require("presets")
local schedule = require("schedule")

local args = ftl.args
local m = ftl.load(args.model or "textattack/bert-base-uncased-SST-2")
local info = m:info()
if not info.task:find("^seq_cls") then
  error("classify.lua needs a sequence-classification model; " .. tostring(args.model) .. " is " .. info.task)
end
presets.lora_attention(m, {r = args.r or 8})
print(string.format("trainable %d of %d parameters (LoRA + classifier head, %s)", m:info().trainable,
  info.base_params, info.task))

local data = ftl.data.jsonl("data/sentiment.jsonl", {format = "classification"})
local train, eval = data:split(0.8, {seed = args.seed or 1})
local before = ftl.evaluate(m, eval)
local steps = args.steps or 60
local r = ftl.train(m, train, {max_steps = steps, batch_size = args.batch_size or 8, max_len = args.max_len or 128,
  lr = args.lr or 1e-3, schedule = "cosine", warmup = schedule.warmup(steps, 0.1), clip = 1.0,
  seed = args.seed or 1})
local after = ftl.evaluate(m, eval)
print(string.format("eval loss %.4f -> %.4f after %d steps", before.loss, after.loss, r.steps))
print(string.format("eval accuracy %.2f -> %.2f", before.accuracy, after.accuracy))
print("saved " .. m:save_adapter("adapter"))
