-- Prices, multipliers and the credit's worth are finite. numeric takes 'NaN' and 'Infinity', and
-- Postgres orders NaN above every number, so a check of `>= 0` alone let an operator's NaN (a
-- script's bad division, a pasted value) through: requests were admitted at a NaN price (whose
-- charge the function cannot compute when upstream reports no cost: a 500, the hold left to the
-- sweeper), and a usd_per_credit of Infinity turns USD amounts into 0 or NaN credits.
-- `< 'Infinity'` keeps out both. /models prices never could be NaN (gateway.catalog_prices reads
-- them by a decimal pattern); what an operator writes now cannot be either.

alter table gateway.model_catalog
  drop constraint model_catalog_prompt_check,
  add constraint model_catalog_prompt_check check (prompt >= 0 and prompt < 'Infinity'),
  drop constraint model_catalog_completion_check,
  add constraint model_catalog_completion_check
    check (completion >= 0 and completion < 'Infinity'),
  drop constraint model_catalog_input_cache_read_check,
  add constraint model_catalog_input_cache_read_check
    check (input_cache_read >= 0 and input_cache_read < 'Infinity'),
  drop constraint model_catalog_input_cache_write_check,
  add constraint model_catalog_input_cache_write_check
    check (input_cache_write >= 0 and input_cache_write < 'Infinity'),
  drop constraint model_catalog_internal_reasoning_check,
  add constraint model_catalog_internal_reasoning_check
    check (internal_reasoning >= 0 and internal_reasoning < 'Infinity'),
  drop constraint model_catalog_request_check,
  add constraint model_catalog_request_check check (request >= 0 and request < 'Infinity'),
  drop constraint model_catalog_web_search_check,
  add constraint model_catalog_web_search_check
    check (web_search >= 0 and web_search < 'Infinity'),
  drop constraint model_catalog_image_check,
  add constraint model_catalog_image_check check (image >= 0 and image < 'Infinity');

alter table gateway.model_pricing
  drop constraint model_pricing_prompt_multiplier_check,
  add constraint model_pricing_prompt_multiplier_check
    check (prompt_multiplier >= 0 and prompt_multiplier < 'Infinity'),
  drop constraint model_pricing_completion_multiplier_check,
  add constraint model_pricing_completion_multiplier_check
    check (completion_multiplier >= 0 and completion_multiplier < 'Infinity');

alter table gateway.system_settings
  drop constraint system_settings_usd_per_credit_check,
  add constraint system_settings_usd_per_credit_check
    check (usd_per_credit > 0 and usd_per_credit < 'Infinity'),
  drop constraint system_settings_web_result_usd_check,
  add constraint system_settings_web_result_usd_check
    check (web_result_usd >= 0 and web_result_usd < 'Infinity');
