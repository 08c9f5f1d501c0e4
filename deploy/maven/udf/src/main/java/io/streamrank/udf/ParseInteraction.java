package io.streamrank.udf;

import java.io.IOException;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
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
 * <p>Jackson's streaming parser, no tree: fields the job does not read are skipped token by token
 * (still checked for syntax), a repeated key keeps its last value, as a tree would. JFR showed the
 * tree (readTree) as the largest single cost left on the source thread.
 *
 * <p>Declared non-deterministic on purpose: the planner then computes it once per record in its
 * own projection instead of inlining it into every consumer (DLQ, late, ledger and windows).
 * The field order must match contract.schema.JSON_FIELDS.
 */
public class ParseInteraction extends ScalarFunction {
    static final JsonFactory FACTORY = new JsonFactory();
    private static final String[] FIELDS = {
        "event_id", "user_id", "item_id", "type", "ts", "value", "category", "consent"
    };

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
        String[] text = new String[FIELDS.length];
        String[] types = new String[FIELDS.length];
        try (JsonParser p = FACTORY.createParser(payload)) {
            if (p.nextToken() != JsonToken.START_OBJECT) {
                return row;
            }
            while (p.nextToken() == JsonToken.FIELD_NAME) {
                int field = index(p.getCurrentName());
                JsonToken value = p.nextToken();
                if (value == JsonToken.START_OBJECT || value == JsonToken.START_ARRAY) {
                    p.skipChildren();
                }
                if (field >= 0) {
                    text[field] = scalar(p, value);
                    types[field] = type(p, value);
                }
            }
            if (p.currentToken() != JsonToken.END_OBJECT || p.nextToken() != null) {
                return row;  // not one complete object: trailing content, or truncated
            }
        } catch (IOException | RuntimeException e) {
            return row;
        }
        row.setField(0, true);
        for (int i = 0; i < FIELDS.length; i++) {
            row.setField(i + 1, text[i]);
            row.setField(i + 1 + FIELDS.length, types[i]);
        }
        return row;
    }

    private static int index(String name) {
        for (int i = 0; i < FIELDS.length; i++) {
            if (FIELDS[i].equals(name)) {
                return i;
            }
        }
        return -1;
    }

    /** The value's text as JsonNode.numberValue()/asText() gave it before (e.g. 1.0E10 for 1e10). */
    private static String scalar(JsonParser p, JsonToken value) throws IOException {
        switch (value) {
            case VALUE_STRING:
                return p.getText();
            case VALUE_NUMBER_INT:
                return String.valueOf(p.getNumberValue());
            case VALUE_NUMBER_FLOAT:
                return String.valueOf(p.getDoubleValue());
            case VALUE_TRUE:
                return "true";
            case VALUE_FALSE:
                return "false";
            default:
                return null;  // null, object, array
        }
    }

    private static String type(JsonParser p, JsonToken value) {
        switch (value) {
            case VALUE_STRING:
                return "string";
            case VALUE_NUMBER_INT:
                return "integer";
            case VALUE_NUMBER_FLOAT:
                return "float";
            case VALUE_TRUE:
            case VALUE_FALSE:
                return "boolean";
            case VALUE_NULL:
                return "null";
            case START_OBJECT:
                return "object";
            default:
                return "array";
        }
    }

    @Override
    public boolean isDeterministic() {
        return false;
    }
}
