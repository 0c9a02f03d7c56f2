-- Quickstart: what each way of fine-tuning costs and what it buys, measured on one machine.
--
-- A small byte-level llama is pre-trained from scratch on general English (data/general.txt,
-- written by data/make_general.py), then taught a word task from that same starting point with
-- full fine-tuning, LoRA (q,v and all-linear), DoRA, IA3, a Pfeiffer bottleneck adapter and
-- prefix tuning. The task (data/words.jsonl, written by data/make_words.py): name the vowels that
-- occur in a word, "garden, vowels: a e". The last `eval_words` words of the file are held out;
-- accuracy is the share of them a method answers exactly right (greedy generation).
-- For each method the table shows trainable parameters, optimizer state, training time and
-- speed, the task loss and accuracy on the held-out words, one sample answer, and how much it
-- forgot: the held-out general-text loss after fine-tuning minus before (a model this small
-- forgets a lot: after 300 steps of nothing but vowel lists it predicts them everywhere). Each
-- method has its own learning rate, tuned for this model and task.
--
--   ftl run recipes/quickstart.lua [steps=300] [pretrain_steps=300] [seed=1] [eval_words=50]
local ftl = require("ftl")

local steps = ftl.args.steps or 300
local pretrain_steps = ftl.args.pretrain_steps or 300
local seed = ftl.args.seed or 1
local eval_words = ftl.args.eval_words or 50
local no_log = 1000000 -- as log_every: no progress lines (ftl still logs each run's last step)

local general = ftl.data.text("data/general.txt", {block = 64})
local gen_train, gen_eval = general:split(0.9, {seed = seed})

-- The task's rows as tables, so that the held-out words can be asked, not only scored.
local rows = ftl.data.jsonl("data/words.jsonl", {format = "instruction"}):rows()
local train_rows, eval_rows = {}, {}
for i, r in ipairs(rows) do
  table.insert(i <= #rows - eval_words and train_rows or eval_rows, r)
end
local template = "{input}, {instruction}: "
-- Each answer ends with a newline, which the model knows from pre-training, instead of the
-- end-of-sequence token, which it never saw there (hard to learn for a method that cannot change
-- the output layer).
local function task_data(list)
  local out = {}
  for i, r in ipairs(list) do out[i] = {instruction = r.instruction, input = r.input, output = r.output .. "\n"} end
  return ftl.data.from(out, {format = "instruction", template = template, eos = false})
end
local task_train, task_eval = task_data(train_rows), task_data(eval_rows)
local function prompt(r) return (template:gsub("{(%w+)}", r)) end

-- 1. a small model, pre-trained from scratch on general text
local m = ftl.new("llama", {
  hidden_size = 128, intermediate_size = 384, num_hidden_layers = 4, num_attention_heads = 4,
  num_key_value_heads = 2, max_position_embeddings = 256, tokenizer = ftl.tokenizer.bytes(), seed = seed,
})
local init = ftl.evaluate(m, gen_eval)
m:unfreeze()
print(string.format("pre-training a %d-parameter llama for %d steps ...", m:info().params, pretrain_steps))
local p = ftl.train(m, gen_train, {max_steps = pretrain_steps, batch_size = 16, lr = 3e-3, schedule = "cosine",
  warmup = 20, seed = seed, log_every = no_log})
local base_dir = m:save("base")
local before = ftl.evaluate(m, gen_eval)
print(string.format("  %.1fs; general-text held-out loss %.3f -> %.3f", p.time_s, init.loss, before.loss))

-- 2. the same task with each method, from the same starting point
local methods = {
  {"full fine-tuning", 5e-4, function(mm) mm:unfreeze() end},
  {"LoRA r8 q,v", 8e-3, function(mm) ftl.lora(mm, {r = 8, alpha = 16}) end},
  {"LoRA r8 all-linear", 3e-3, function(mm) ftl.lora(mm, {targets = "all-linear", r = 8, alpha = 16}) end},
  {"DoRA r8 q,v", 8e-3, function(mm) ftl.lora(mm, {r = 8, alpha = 16, dora = true}) end},
  {"IA3", 5e-1, function(mm) ftl.ia3(mm) end},
  {"adapter (Pfeiffer)", 5e-3, function(mm) ftl.adapter(mm, {style = "pfeiffer", reduction = 4}) end},
  {"prefix, 16 tokens", 3e-1, function(mm) ftl.prefix(mm, {tokens = 16}) end},
}

local show = eval_rows[#eval_rows]
local results = {}
print(string.format("fine-tuning on %d words for %d steps each (%d held out) ...", #train_rows, steps, #eval_rows))
for _, spec in ipairs(methods) do
  local name, lr, attach = spec[1], spec[2], spec[3]
  local mm = ftl.load(base_dir)
  attach(mm)
  local r = ftl.train(mm, task_train, {max_steps = steps, batch_size = 16, lr = lr, schedule = "cosine",
    warmup = 10, clip = 1.0, seed = seed, log_every = no_log})
  local task = ftl.evaluate(mm, task_eval)
  local forgot = ftl.evaluate(mm, gen_eval).loss - before.loss
  local right, sample = 0, nil
  for _, e in ipairs(eval_rows) do
    local answer = mm:generate(prompt(e), {max_tokens = 12, stop = "\n"})
    if answer == e.output then right = right + 1 end
    if e == show then sample = answer end
  end
  local acc = right / #eval_rows
  print(string.format("  %-20s %5.1fs  accuracy %3.0f%%", name, r.time_s, 100 * acc))
  results[#results + 1] = {name, r.trainable, r.optimizer_bytes, r.time_s, r.tokens_per_s, task.loss, acc, forgot, sample}
end

print(string.format("\n%-20s %10s %10s %6s %7s %9s %8s %7s  %s", "method", "trainable", "opt state", "time",
  "tok/s", "task loss", "accuracy", "forgot", string.format("answer to %q (%s)", prompt(show), show.output)))
for _, r in ipairs(results) do
  print(string.format("%-20s %10d %9.1fK %5.1fs %7.0f %9.3f %7.0f%% %+7.3f  %q", r[1], r[2], r[3] / 1024, r[4], r[5],
    r[6], 100 * r[7], r[8], r[9]))
end
print(string.format("\naccuracy: exact answers on %d held-out words; forgot: general-text held-out loss after "
  .. "fine-tuning minus before (%.3f)", #eval_rows, before.loss))
