package io.streamrank.udf;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.DeserializationFeature;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.ScalarFunction;
import org.apache.flink.types.Row;

/**
 * Parses an interaction record once and returns, for each field the job reads, its text
 * (strings as is, numbers and booleans as text, NULL for a missing field, JSON null, an object or
 * an array) and its JSON type (string, integer, float, boolean, null, object, array; NULL when
 * missing), so that the SQL rules can mirror the Python validator exactly. A record that is not one
 * JSON object (trailing content included) gives j_is_object = false. Validation stays in SQL,
 * generated from contract/schema.py: this function only parses.
 *
 * <p>Declared non-deterministic on purpose: the planner then computes it once per record in its
 * own projection instead of inlining it into every consumer (DLQ, late, ledger and both windows).
 * The field order must match contract.schema.JSON_FIELDS.
 */
public class ParseInteraction extends ScalarFunction {
    private static final String[] FIELDS = {
        "event_id", "user_id", "item_id", "type", "ts", "value", "category", "consent"
    };
    private transient ObjectMapper mapper;

    @DataTypeHint("ROW<j_is_object BOOLEAN, j_event_id STRING, j_user_id STRING, j_item_id STRING, "
            + "j_type STRING, j_ts STRING, j_value STRING, j_category STRING, j_consent STRING, "
            + "t_event_id STRING, t_user_id STRING, t_item_id STRING, t_type STRING, t_ts STRING, "
            + "t_value STRING, t_category STRING, t_consent STRING>")
    public Row eval(String payload) {
        Row row = new Row(2 * FIELDS.length + 1);
        row.setField(0, false);
        if (payload == null) {
            return row;
        }
        if (mapper == null) {
            mapper = new ObjectMapper().enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);
        }
        JsonNode root;
        try {
            root = mapper.readTree(payload);
        } catch (Exception e) {
            return row;
        }
        if (root == null || !root.isObject()) {
            return row;
        }
        row.setField(0, true);
        for (int i = 0; i < FIELDS.length; i++) {
            JsonNode node = root.get(FIELDS[i]);
            row.setField(i + 1, scalar(node));
            row.setField(i + 1 + FIELDS.length, type(node));
        }
        return row;
    }

    private static String scalar(JsonNode node) {
        if (node == null || node.isNull() || node.isContainerNode()) {
            return null;
        }
        if (node.isTextual()) {
            return node.textValue();
        }
        if (node.isNumber()) {
            return String.valueOf(node.numberValue());
        }
        return node.asText();
    }

    private static String type(JsonNode node) {
        if (node == null) {
            return null;
        }
        if (node.isTextual()) {
            return "string";
        }
        if (node.isIntegralNumber()) {
            return "integer";
        }
        if (node.isNumber()) {
            return "float";
        }
        if (node.isBoolean()) {
            return "boolean";
        }
        if (node.isNull()) {
            return "null";
        }
        return node.isObject() ? "object" : "array";
    }

    @Override
    public boolean isDeterministic() {
        return false;
    }
}
