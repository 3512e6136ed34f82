// node validate.cjs batch-0.json ...: validate upload-batch request bodies as Neuronpedia's route does.
const fs = require("fs");
const { array, number, object, string, ValidationError } = require("yup");

const logit = object({ token: string().required(), value: number().required() });

const uploadBatchSchema = object({
  modelId: string().required().lowercase(),
  source: string().required().lowercase(),
  features: array()
    .of(
      object({
        index: number().integer().required().min(0).max(10_000_000),
        density: number().optional().min(0).max(1),
        topLogits: array().of(logit).optional().nullable().max(20),
        bottomLogits: array().of(logit).optional().nullable().max(20),
        explanations: array()
          .of(
            object({
              text: string().required().min(1).max(512),
              methodName: string().optional().nullable().lowercase(),
              modelName: string().optional().nullable().lowercase(),
            }),
          )
          .optional(),
        activations: array()
          .of(
            object({
              tokens: array().of(string().required()).required().min(1).max(1024),
              values: array().of(number().required()).required().min(1).max(1024),
              quantileMax: number().optional().nullable().max(99999999),
              quantileMin: number().optional().nullable().max(99999999),
              quantileFraction: number().optional().nullable().min(0).max(1),
            }),
          )
          .required()
          .min(1),
      }),
    )
    .required()
    .min(1)
    .max(128),
});

function routeChecks(body) {
  const errors = [];
  for (const feature of body.features) {
    for (const activation of feature.activations) {
      if (activation.tokens.length !== activation.values.length) {
        errors.push(`feature ${feature.index}: tokens and values differ in length`);
      }
    }
  }
  if (new Set(body.features.map((f) => f.index)).size !== body.features.length) {
    errors.push("feature indexes are not unique");
  }
  return errors;
}

(async () => {
  for (const file of process.argv.slice(2)) {
    const body = JSON.parse(fs.readFileSync(file, "utf8"));
    let errors;
    try {
      // abortEarly false: every error, as a count of what fails (the route reports the first)
      const parsed = await uploadBatchSchema.validate(body, { abortEarly: false });
      errors = routeChecks(parsed);
    } catch (error) {
      if (!(error instanceof ValidationError)) throw error;
      errors = error.errors;
    }
    console.log(JSON.stringify({ file, ok: errors.length === 0, errors }));
  }
})();
