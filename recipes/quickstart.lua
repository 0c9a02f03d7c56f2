-- Quickstart: what each way of fine-tuning costs and what it buys, measured on one machine.
--
-- A small llama is pre-trained on general text (data/general.txt), then taught a word task
-- (data/words.jsonl) from that same starting point with full fine-tuning, LoRA, IA3, a
-- bottleneck adapter and prefix tuning. For each method: trainable parameters, optimizer state,
-- time, task loss and accuracy of a sample answer, and how much general text it forgot.
--
--   ftl run recipes/quickstart.lua [steps=150] [pretrain_steps=300] [seed=1]
local ftl = require("ftl")

local steps = ftl.args.steps or 150
local pretrain_steps = ftl.args.pretrain_steps or 300
local seed = ftl.args.seed or 1

local general = ftl.data.text("data/general.txt", {block = 64})
local gen_train, gen_eval = general:split(0.85, {seed = seed})
local template = "### {instruction}\n{input}\n### Answer:\n"
local words = ftl.data.jsonl("data/words.jsonl", {format = "instruction", template = template})
local task_train, task_eval = words:split(0.9, {seed = seed})

-- 1. a small model, pre-trained from scratch on general text
local m = ftl.new("llama", {
  hidden_size = 128, intermediate_size = 384, num_hidden_layers = 4, num_attention_heads = 4,
  num_key_value_heads = 2, max_position_embeddings = 256, tokenizer = ftl.tokenizer.bytes(), seed = seed,
})
m:unfreeze()
print(string.format("pre-training a %d-parameter llama for %d steps ...", m:info().params, pretrain_steps))
ftl.train(m, gen_train, {max_steps = pretrain_steps, batch_size = 16, lr = 3e-3, schedule = "cosine",
  warmup = 20, seed = seed})
local base_dir = m:save("base")
local before = ftl.evaluate(m, gen_eval)

-- 2. the same task with each method, from the same starting point
local methods = {
  {"full fine-tuning", 1e-3, function(mm) mm:unfreeze() end},
  {"LoRA r8 q,v", 1e-2, function(mm) ftl.lora(mm, {r = 8, alpha = 16}) end},
  {"LoRA r8 all-linear", 1e-2, function(mm) ftl.lora(mm, {targets = "all-linear", r = 8, alpha = 16}) end},
  {"DoRA r8 q,v", 1e-2, function(mm) ftl.lora(mm, {r = 8, alpha = 16, dora = true}) end},
  {"IA3", 3e-2, function(mm) ftl.ia3(mm) end},
  {"adapter (Pfeiffer)", 1e-2, function(mm) ftl.adapter(mm, {style = "pfeiffer", reduction = 8}) end},
  {"prefix, 16 tokens", 3e-2, function(mm) ftl.prefix(mm, {tokens = 16}) end},
}

local question = "### Spell the word backwards.\nriver\n### Answer:\n"
local rows = {}
for _, spec in ipairs(methods) do
  local name, lr, attach = spec[1], spec[2], spec[3]
  local mm = ftl.load(base_dir)
  attach(mm)
  local r = ftl.train(mm, task_train, {max_steps = steps, batch_size = 16, lr = lr, schedule = "cosine",
    warmup = 10, seed = seed})
  local task = ftl.evaluate(mm, task_eval)
  local forgot = ftl.evaluate(mm, gen_eval).loss - before.loss
  local answer = mm:generate(question, {max_tokens = 8, stop = "\n"})
  rows[#rows + 1] = {name, r.trainable, r.optimizer_bytes, r.time_s, r.tokens_per_s, task.loss, forgot, answer}
end

print(string.format("\n%-20s %10s %10s %7s %8s %9s %8s  %s", "method", "trainable", "opt state", "time", "tok/s",
  "task loss", "forgot", "answer to 'river' backwards"))
for _, r in ipairs(rows) do
  print(string.format("%-20s %10d %9.1fK %6.1fs %8.0f %9.3f %+8.3f  %q", r[1], r[2], r[3] / 1024, r[4], r[5], r[6], r[7], r[8]))
end
print(string.format("\ngeneral-text loss before fine-tuning: %.3f ('forgot' is the change after it)", before.loss))
