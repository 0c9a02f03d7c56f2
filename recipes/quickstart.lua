-- Quickstart: what each way of fine-tuning costs and what it buys, measured on one machine.
--
-- A small byte-level llama is pre-trained from scratch on general English (data/general.txt,
-- written by data/make_general.py; cached in the output directory, keyed by its settings, so a
-- second run skips it), then require("compare") teaches fresh copies of it a word task with each
-- of ten methods: full fine-tuning, the top 2 layers, LoRA (q,v and all-linear), DoRA, IA3,
-- Houlsby and Pfeiffer bottleneck adapters, prefix and prompt tuning. The task
-- (data/words.jsonl, written by data/make_words.py): name the vowels that occur in a word,
-- "garden, vowels: a e". The last `eval_words` words are held out; accuracy is the share of them
-- a method answers exactly right (greedy generation). Retention is the held-out general-text
-- loss after fine-tuning minus before (a model this small forgets a lot: after 300 steps of
-- nothing but vowel lists it predicts them everywhere). A second task on the same words (the
-- last letter, "garden, last letter: n") shows what several tasks on one base cost: an adapter
-- per task, switched, against full fine-tuning's two copies or its forgetting. Each method has its
-- own learning rate, tuned for this model and task. The table, comparison.csv, comparison.md
-- (with a recommendation) and comparison.svg land in the output directory.
--
--   ftl run recipes/quickstart.lua [steps=300] [pretrain_steps=300] [seed=1] [eval_words=50]
--     [methods=full,lora,...] [multitask=false]
local ftl = require("ftl")
local compare = require("compare")

local steps = ftl.args.steps or 300
local pretrain_steps = ftl.args.pretrain_steps or 300
local seed = ftl.args.seed or 1
local eval_words = ftl.args.eval_words or 50
local no_log = 1000000 -- as log_every: no progress lines (ftl still logs each run's last step)

local general = ftl.data.text("data/general.txt", {block = 64})
local gen_train, gen_eval = general:split(0.9, {seed = seed})

local rows = ftl.data.jsonl("data/words.jsonl", {format = "instruction"}):rows()
local template = "{input}, {instruction}: "
-- Each answer ends with a newline, which the model knows from pre-training, instead of the
-- end-of-sequence token, which it never saw there (hard to learn for a method that cannot change
-- the output layer).
local function task(list, instruction, answer)
  local train, eval = {}, {}
  for i, r in ipairs(list) do
    local row = {instruction = instruction or r.instruction, input = r.input, output = (answer and answer(r) or r.output) .. "\n"}
    table.insert(i <= #list - eval_words and train or eval, row)
  end
  local function data(t) return ftl.data.from(t, {format = "instruction", template = template, eos = false}) end
  return data(train), data(eval), #train
end
local vowels_train, vowels_eval, n_train = task(rows)
local last_train, last_eval = task(rows, "last letter", function(r) return r.input:sub(-1) end)

-- 1. a small model, pre-trained from scratch on general text (once per setting)
local config = {
  hidden_size = 128, intermediate_size = 384, num_hidden_layers = 4, num_attention_heads = 4,
  num_key_value_heads = 2, max_position_embeddings = 256, seed = seed,
}
local base_dir = string.format("base-h%d-l%d-p%d-s%d", config.hidden_size, config.num_hidden_layers, pretrain_steps, seed)
if ftl.fs.exists(ftl.fs.join(ftl.out_dir, base_dir, "config.json")) then
  base_dir = ftl.fs.join(ftl.out_dir, base_dir)
  print("pre-trained model: " .. base_dir .. " (cached)")
else
  config.tokenizer = ftl.tokenizer.bytes()
  local m = ftl.new("llama", config)
  local init = ftl.evaluate(m, gen_eval)
  m:unfreeze()
  print(string.format("pre-training a %d-parameter llama for %d steps ...", m:info().params, pretrain_steps))
  local p = ftl.train(m, gen_train, {max_steps = pretrain_steps, batch_size = 16, lr = 3e-3, schedule = "cosine",
    warmup = 20, seed = seed, log_every = no_log})
  base_dir = m:save(base_dir)
  print(string.format("  %.1fs; general-text held-out loss %.3f -> %.3f", p.time_s, init.loss,
    ftl.evaluate(m, gen_eval).loss))
end

-- 2. the same task with each method, from the same starting point
local methods = {
  {"full", lr = 5e-4},
  {"top", lr = 2e-3},
  {"lora", lr = 8e-3},
  {"lora_all", lr = 3e-3},
  {"dora", lr = 8e-3},
  {"ia3", lr = 5e-1},
  {"houlsby", lr = 5e-3, reduction = 4},
  {"pfeiffer", lr = 5e-3, reduction = 4},
  {"prefix", lr = 3e-1},
  {"prompt", lr = 3e-1},
}
if ftl.args.methods then
  local picked = {}
  for name in tostring(ftl.args.methods):gmatch("[^,]+") do
    for _, m in ipairs(methods) do if m[1] == name then picked[#picked + 1] = m end end
  end
  methods = picked
end
print(string.format("fine-tuning on %d words for %d steps each (%d held out) ...", n_train, steps, eval_words))
return compare.run({
  model = base_dir, train = vowels_train, eval = vowels_eval, retention = gen_eval, methods = methods,
  steps = steps, batch_size = 16, schedule = "cosine", warmup = 10, clip = 1.0, seed = seed,
  max_tokens = 12, stop = "\n", inference = {prompt = "umbrella, vowels: ", tokens = 32, runs = 10},
  multitask = ftl.args.multitask ~= false and {train = last_train, eval = last_eval} or nil,
})
